"""The storage interfaces: small async protocols, and every optional ability named.

Like tusd's StoreComposer, a store declares what it can do by implementing the optional
protocols below, and callers ask with ``isinstance`` (never ``getattr``/``hasattr`` probes):

=======================  ==================================================================
:class:`ChunkStore`      required of every chunk store (uploads in progress)
:class:`ObjectStore`     required of every object store (finished files)
:class:`Lifecycle`       ``open()`` before use, ``close()`` at shutdown
:class:`Finisher`        told when an upload has all its bytes (``finish``)
:class:`Concatenater`    builds an upload from others (tus ``concatenation``)
:class:`PartLimited`     caps what one upload may still take (``append_limit``: S3 parts)
:class:`UnfinishedReader` a Finisher that still reads an upload back before ``finish``
:class:`ServerSideCopier` commits an upload into an object store without streaming it
:class:`LocalFileAccess` the upload's bytes are a plain local file (``local_path``)
:class:`UploadLister`    lists what it holds, to find entries no upload row names (a crash
                         between the store's ``create`` and the catalog's insert leaves one)
=======================  ==================================================================

The protocol layer advertises Tus-Extension from these. Stores never raise HTTP errors:
they raise :class:`StorageError` (or let the caller's exceptions from the source pass
through) and the service maps them; :class:`StorageFull` says the disk or bucket is full.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "ChunkSource",
    "ChunkStore",
    "Concatenater",
    "Finisher",
    "IntegrityError",
    "Lifecycle",
    "ListingRefused",
    "LocalFileAccess",
    "ObjectInfo",
    "ObjectStore",
    "PartLimited",
    "ServerSideCopier",
    "StorageError",
    "StorageFull",
    "StorageLimitExceeded",
    "StoreCapabilities",
    "StoredUpload",
    "UnfinishedReader",
    "UploadDataMissing",
    "UploadLister",
]

#: The bytes of one PATCH, in blocks of bounded size, as the protocol layer reads them.
ChunkSource = AsyncIterable[bytes]


class StorageError(Exception):
    """The store could not do what was asked (disk full, S3 unreachable, ...)."""


class StorageFull(StorageError):
    """The store has no room left: the disk or quota is full (ENOSPC, EDQUOT), the S3
    server says it is out of space, or the catalog's database could not grow.

    What was stored before the error stays (an upload's offset says exactly how much);
    the same request succeeds once space is freed. Mapped to 507 Insufficient Storage.
    """


class IntegrityError(StorageError):
    """Stored bytes failed an integrity check (authentication of ciphertext, a missing
    envelope, the recorded sha256): tampered with or damaged. Never served."""


class UploadDataMissing(StorageError):
    """The store holds no data for this upload (deleted, or never created)."""


class ListingRefused(StorageError):
    """The store will not list its uploads here: it cannot tell its own entries from what
    others keep in the same place (an S3 chunk store without a key prefix of its own)."""


@dataclass(frozen=True, slots=True)
class StoreCapabilities:
    """Limits a store imposes, used to advertise and enforce Tus-Max-Size."""

    max_size: int | None = None


@runtime_checkable
class ChunkStore(Protocol):
    """Bytes of uploads in progress, addressed by server-generated upload ids."""

    capabilities: StoreCapabilities

    async def create(self, upload_id: str, *, length: int | None = None) -> None:
        """Make room for a new, empty upload (``length`` when known, to plan its layout)."""

    async def get_offset(self, upload_id: str) -> int:
        """How many bytes the store really holds for the upload (the truth behind Upload-Offset)."""

    async def write(
        self,
        upload_id: str,
        offset: int,
        source: ChunkSource,
        *,
        verify: Callable[[], None] | None = None,
        fsync: bool = False,
    ) -> int:
        """Append the source's bytes at ``offset``; return how many bytes were stored.

        Without ``verify``, bytes become part of the upload as they arrive, so an interrupted
        body keeps what was received. With ``verify``, the whole chunk is staged first and
        ``verify()`` is called once the source is exhausted; if it raises, the chunk is
        discarded and the exception propagates (the offset is unchanged). An exception raised
        by the source propagates after the bytes received before it are stored.
        The call returns only when every byte it reports is written (and synced if ``fsync``).
        """

    def read(self, upload_id: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes from ``start``."""

    async def delete(self, upload_id: str) -> None:
        """Remove the upload's bytes; no error when already gone."""


@runtime_checkable
class Concatenater(Protocol):
    """Optional capability: build an upload from the bytes of others, in order."""

    async def concatenate(self, upload_id: str, parts: Sequence[str], *, fsync: bool) -> int:
        """Fill ``upload_id`` with the parts' bytes; returns the resulting length."""


@runtime_checkable
class Finisher(Protocol):
    """Optional capability: told when an upload has all its bytes (S3 completes it then)."""

    async def finish(self, upload_id: str) -> None:
        """Make the upload's bytes one readable object; idempotent."""


class StorageLimitExceeded(StorageError):
    """The request would take the upload past a limit of the store (S3 part count, size)."""


@runtime_checkable
class PartLimited(Protocol):
    """Optional capability: the store caps how many more bytes one upload may take.

    S3 allows 10,000 parts per multipart upload; the service asks before reading a body,
    so a PATCH past the limit is refused (413) before any byte is stored.
    """

    async def append_limit(self, upload_id: str, offset: int) -> int:
        """Bytes the upload, now holding ``offset`` bytes, may still take."""


@runtime_checkable
class UnfinishedReader(Protocol):
    """Optional capability of a :class:`Finisher`: it reads an upload back before ``finish``.

    A plain chunk store (not a Finisher) always can; S3's cannot (an unfinished upload is a
    multipart upload), the encrypted chunk store can. The IETF handler needs it to check
    Repr-Digest over the bytes of a resumed upload.
    """

    reads_unfinished: Literal[True]


@runtime_checkable
class ServerSideCopier(Protocol):
    """Optional capability: commit an upload into an object store without streaming it."""

    async def copy_into(
        self,
        upload_id: str,
        objects: object,
        key: str,
        *,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> bool:
        """Store the upload's bytes as object ``key`` in ``objects``; False when this store
        cannot for that object store (the caller then streams the bytes)."""


@runtime_checkable
class Lifecycle(Protocol):
    """Optional capability: a resource opened before use and closed at shutdown."""

    async def open(self) -> None:
        """Prepare (directories, bucket, connections); raise StorageError if unreachable."""

    async def close(self) -> None:
        """Release what ``open`` or use acquired (thread pools, connections); idempotent."""


@runtime_checkable
class LocalFileAccess(Protocol):
    """Optional capability: the upload's bytes are a plain local file (enables fast paths)."""

    def local_path(self, upload_id: str) -> Path:
        """The file holding the upload's bytes."""


@dataclass(frozen=True, slots=True)
class StoredUpload:
    """One piece of an upload, as a chunk store's listing finds it."""

    upload_id: str
    #: When the store last wrote this piece, by the store's own clock (a file's mtime, an S3
    #: object's LastModified, a multipart upload's initiation), timezone-aware.
    modified: dt.datetime


@runtime_checkable
class UploadLister(Protocol):
    """Optional capability: the store lists the uploads it holds something of.

    An upload is created in the store first, then its row in the catalog: a process killed
    between the two leaves an entry no row names, which nothing else would ever remove. The
    orphan sweep lists the store, looks the ids up in the catalog, and removes, with
    :meth:`remove_orphan`, what no row names and has not changed for a long time.
    """

    def list_uploads(self, *, modified_before: dt.datetime) -> AsyncGenerator[StoredUpload, None]:
        """The pieces (files, objects, multipart uploads) the store holds that were last
        written before ``modified_before``; an upload with several such pieces may come once
        for each. Streamed a page at a time, in no particular order: memory stays bounded
        whatever the count, and blocking calls (a directory listing, the S3 SDK) run in
        worker threads. An entry removed or added meanwhile may be listed or not.
        Raises :class:`ListingRefused` where the store cannot list safely."""

    async def remove_orphan(self, upload_id: str) -> None:
        """Remove everything the store holds of an upload that no catalog row names, also
        the pieces :meth:`ChunkStore.delete` would not find (S3: a multipart upload that no
        ``.info`` names, left by a crash between the two); no error when already gone."""

    async def get_offset(self, upload_id: str) -> int:
        """As :meth:`ChunkStore.get_offset`: the sweep removes only uploads that hold no
        bytes (what a crash between the store's entry and the catalog's row leaves)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class ObjectStore(Protocol):
    """Finished files, by key. Metadata travels with the object."""

    #: Short name recorded with each file ("local", "s3").
    kind: str

    async def open(self) -> None:
        """Prepare (create the directory or bucket); raise StorageError if unreachable."""

    async def put_file(
        self,
        key: str,
        path: Path,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        consume: bool = False,
    ) -> None:
        """Store a local file under ``key``. With ``consume`` the store may move the file."""

    async def put_stream(
        self,
        key: str,
        source: AsyncIterable[bytes],
        *,
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        """Store ``size`` bytes from ``source`` under ``key``, streaming."""

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's size and metadata, or None if absent."""

    def get(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object's bytes (a range of them)."""

    async def delete(self, key: str) -> None:
        """Remove the object; no error when absent."""

    async def presign_get(
        self,
        key: str,
        *,
        expires: dt.timedelta,
        filename: str | None,
        content_disposition: str | None = None,
    ) -> str | None:
        """A short-lived URL to download the object directly, or None if not supported.

        The download is served as ``application/octet-stream`` with ``content_disposition``
        (built by the caller, the same header as a download through the server), or an
        attachment named ``filename``; a header value with a control character is refused.
        """
