"""S3 / MinIO object store through the ``minio`` SDK.

The SDK is synchronous: every call runs in a bounded thread pool owned by the store, so a
slow S3 never stalls the event loop, and the pool size bounds what one instance asks of S3.

Server-side encryption (``S3Settings.sse``): ``"s3"`` asks S3 to encrypt every object with its
own keys (SSE-S3), ``"c"`` with a key this server holds and sends with every request (SSE-C).
Both stores apply it to every call that writes or reads object data. Before a store writes
anything (at ``open()``, or at the first write if ``open()`` failed), it proves with a probe
object that the S3 server really encrypts; until a probe passes, every write is refused.

The package: :mod:`.settings` (connection settings, limits, metadata encoding, S3 errors),
:mod:`.objects` (:class:`S3ObjectStore`, which owns the client and its thread pool) and
:mod:`.chunks` (:class:`S3ChunkStore`, which works through an object store of its own).
"""

from .chunks import S3ChunkStore
from .objects import S3ObjectStore
from .settings import SSE_MODES, S3Settings, part_size_for

__all__ = ["SSE_MODES", "S3ChunkStore", "S3ObjectStore", "S3Settings", "part_size_for"]
