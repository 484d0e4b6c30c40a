"""The catalog: SQL state of uploads (and, later, files and events) on SQLite or PostgreSQL."""

from .db import Database, create_database
from .migrate import current_revision, downgrade, upgrade
from .uploads import UploadRecord, UploadRepository, UploadState

__all__ = [
    "Database",
    "UploadRecord",
    "UploadRepository",
    "UploadState",
    "create_database",
    "current_revision",
    "downgrade",
    "upgrade",
]
