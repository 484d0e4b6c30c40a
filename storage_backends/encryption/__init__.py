"""Envelope encryption at rest: AES-256-GCM in fixed-size segments, one data key per file.

An encrypted file (an upload in progress or a finished object) is a run of segments, each
``nonce (12) || ciphertext || tag (16)``; segment ``i`` holds plaintext bytes
``[i * S, (i + 1) * S)``. The associated data of a segment binds its index (segments cannot be
reordered) and, in finished objects, whether it is the last one (an object cut at a segment
boundary is detected; an empty object still has one, empty, final segment). A Range read
decrypts only the segments it touches, so memory stays bounded by one segment.

Each file gets a random 256-bit data key, wrapped with AES-256-GCM by a master key named by an
id, and bound to the file's name so envelopes cannot be swapped between files. The envelope
(key id, wrapped key, segment size, size) lives beside the data: in the object's metadata, or
in a sidecar for an upload in progress. Rotating the master key rewrites envelopes, never data.

:class:`EncryptedObjectStore` wraps any :class:`ObjectStore` (local disk, or S3 as client-side
encryption); :class:`EncryptedChunkStore` is the local chunk store with encryption (appending
to an upload re-seals its last, partial segment; when the upload has all its bytes, its last
segment is re-sealed as final, and the sealed file is then already a finished object).

Cost: AES-GCM runs at about 10 GB/s per core, so what costs is moving bytes and handing work
between threads. Segments are sealed and opened from memoryview slices of the blocks that
carry them (only a segment split between two blocks is assembled), into pooled buffers. An
upload's blocks are sealed and written as they arrive, on the event loop (see chunks._seal_into:
cryptography releases the GIL while it works, and the hand-offs that a worker thread costs
outweigh the cipher); on local disk, reads are preads of whole sealed segments, about 1 MiB
per trip to a worker thread; and a commit from the encrypted chunk store into the encrypted
local object store is a rename of the sealed file (:meth:`EncryptedChunkStore.finish`,
:meth:`EncryptedChunkStore.copy_into`).

The package, by concern: :mod:`.keys` (master keys, envelopes), :mod:`.segments` (the
segment cipher and streaming seal/open), :mod:`.objects` (the object store) and
:mod:`.chunks` (the chunk store); the file I/O is :mod:`storage_backends.fileio`, shared
with the plaintext local stores.
"""

from typing import TYPE_CHECKING, Any

from .keys import (
    NONCE,
    EncryptionKeyError,
    Envelope,
    IntegrityError,
    KeyRing,
    RotationReport,
    generate_key_spec,
    parse_key_spec,
)

if TYPE_CHECKING:
    from .chunks import EncryptedChunkStore
    from .objects import EncryptedObjectStore, MetadataRewriter
    from .segments import (
        DEFAULT_SEGMENT_SIZE,
        OVERHEAD,
        TAG,
        SegmentCipher,
        sealed_size,
        segment_count,
    )

#: The stores and the segment cipher load cryptography: imported on first use (PEP 562), so
#: a server without encryption that only needs the error types above never loads it.
_LAZY = {
    "EncryptedChunkStore": "chunks",
    "EncryptedObjectStore": "objects",
    "MetadataRewriter": "objects",
    "DEFAULT_SEGMENT_SIZE": "segments",
    "OVERHEAD": "segments",
    "TAG": "segments",
    "SegmentCipher": "segments",
    "sealed_size": "segments",
    "segment_count": "segments",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "NONCE",
    "OVERHEAD",
    "TAG",
    "EncryptedChunkStore",
    "EncryptedObjectStore",
    "EncryptionKeyError",
    "Envelope",
    "IntegrityError",
    "KeyRing",
    "MetadataRewriter",
    "RotationReport",
    "SegmentCipher",
    "generate_key_spec",
    "parse_key_spec",
    "sealed_size",
    "segment_count",
]
