"""The settings of the server in sections, one frozen dataclass per concern.

Each section holds its fields (with the doc that ``docs/configuration.md`` is generated from)
and checks them in its ``__post_init__``: values only, no I/O. A component receives the section
it needs (the stores :class:`StorageSettings`, the pipeline :class:`PipelineSettings`...).

:class:`tusserver.config.TusServerConfig` is the flat facade composed of them: the keyword
constructor and the flat attributes of the embedding API, ``config.sections`` for the wiring.
Reading key files and checking paths is a start-up step (:mod:`tusserver.startup`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._base import ConfigError
from .auth import AuthSettings
from .cache import CacheSettings
from .encryption import EncryptionSettings
from .http import HttpSettings, WebSettings
from .logs import LogSettings
from .pipeline import CATEGORIES, PipelineSettings
from .server import DEFAULT_DATABASE_TIMEOUT, ServerSettings, normalize_database_url
from .storage import MAX_DOWNLOAD_REDIRECT, StorageSettings
from .uploads import UploadSettings
from .webhooks import WebhookSettings

__all__ = [
    "CATEGORIES",
    "DEFAULT_DATABASE_TIMEOUT",
    "MAX_DOWNLOAD_REDIRECT",
    "AuthSettings",
    "CacheSettings",
    "ConfigError",
    "EncryptionSettings",
    "HttpSettings",
    "LogSettings",
    "PipelineSettings",
    "Sections",
    "ServerSettings",
    "StorageSettings",
    "UploadSettings",
    "WebSettings",
    "WebhookSettings",
    "normalize_database_url",
]


@dataclass(frozen=True, kw_only=True)
class Sections:
    """Every section of one configuration, in the order of the reference."""

    server: ServerSettings
    uploads: UploadSettings
    storage: StorageSettings
    encryption: EncryptionSettings
    pipeline: PipelineSettings
    webhooks: WebhookSettings
    http: HttpSettings
    auth: AuthSettings
    web: WebSettings
    cache: CacheSettings
    logs: LogSettings
