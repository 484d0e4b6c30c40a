"""Where bytes live: chunk stores (uploads in progress) and object stores (finished files)."""

from .base import (
    ChunkSource,
    ChunkStore,
    Concatenater,
    StorageError,
    StoreCapabilities,
    UploadDataMissing,
)
from .local import LocalChunkStore

__all__ = [
    "ChunkSource",
    "ChunkStore",
    "Concatenater",
    "LocalChunkStore",
    "StorageError",
    "StoreCapabilities",
    "UploadDataMissing",
]
