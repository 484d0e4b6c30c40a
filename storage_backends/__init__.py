"""Where bytes live: chunk stores (uploads in progress) and object stores (finished files)."""

from .base import (
    ChunkSource,
    ChunkStore,
    Concatenater,
    Finisher,
    Lifecycle,
    LocalFileAccess,
    PartLimited,
    ServerSideCopier,
    StorageError,
    StoreCapabilities,
    UnfinishedReader,
    UploadDataMissing,
)
from .local import LocalChunkStore

__all__ = [
    "ChunkSource",
    "ChunkStore",
    "Concatenater",
    "Finisher",
    "Lifecycle",
    "LocalChunkStore",
    "LocalFileAccess",
    "PartLimited",
    "ServerSideCopier",
    "StorageError",
    "StoreCapabilities",
    "UnfinishedReader",
    "UploadDataMissing",
]
