"""What the S3 stores share: connection settings, the SDK's limits, metadata encoding and
the reading of S3 errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import quote, unquote

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error
from minio.sse import Sse, SseCustomerKey, SseS3

from ..base import StorageError

__all__ = [
    "FULL_CODES",
    "MAX_OBJECT",
    "MAX_PARTS",
    "MIN_PART",
    "READ_BLOCK",
    "SSE_MODES",
    "S3Settings",
    "decode_meta",
    "encode_meta",
    "is_full",
    "is_missing",
    "is_not_implemented",
    "part_size_for",
]

T = TypeVar("T")
READ_BLOCK = 256 * 1024
MIN_PART = 5 * 1024 * 1024
MAX_PARTS = 10_000
#: The largest S3 object (5 TiB).
MAX_OBJECT = 5 * 1024**4

#: Server-side encryption modes: none, SSE-S3 (keys managed by S3), SSE-C (our key).
SSE_MODES = {"": "none", "s3": "SSE-S3", "c": "SSE-C"}


class S3Settings:
    """Connection settings shared by the S3 object store and the S3 chunk store."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str | None = None,
        secure: bool = True,
        part_size: int = 16 * 1024 * 1024,
        parallel_parts: int = 4,
        max_workers: int = 16,
        sse: str = "",
        sse_customer_key: bytes | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        if not (connect_timeout > 0 and read_timeout > 0):
            raise ValueError("connect_timeout and read_timeout must be positive")
        if part_size < MIN_PART:
            raise ValueError("part_size must be at least 5 MiB")
        if sse not in SSE_MODES:
            raise ValueError("sse must be '' (none), 's3' (SSE-S3) or 'c' (SSE-C)")
        if (sse == "c") != (sse_customer_key is not None):
            raise ValueError("sse_customer_key is required with sse='c', and only then")
        self._ssec = SseCustomerKey(sse_customer_key) if sse_customer_key is not None else None
        self.endpoint = endpoint
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.region = region or None
        self.secure = secure
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        self.max_workers = max_workers
        self.sse = sse
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    @property
    def sse_label(self) -> str:
        """The encryption mode for messages: "none", "SSE-S3" or "SSE-C"."""
        return SSE_MODES[self.sse]

    @property
    def write_sse(self) -> Sse | None:
        """What to pass as ``sse=`` when an object (or a multipart upload) is created."""
        if self.sse == "s3":
            return SseS3()
        return self._ssec

    @property
    def ssec(self) -> SseCustomerKey | None:
        """The SSE-C key every read (get, stat, copy source) and part upload must carry."""
        return self._ssec

    def client(self) -> Minio:
        """A client whose calls fail (``StorageError`` where the stores call it) when S3 does
        not answer: the SDK's own default waits five minutes per attempt, six attempts, so a
        hung S3 would hold requests and pipeline workers for half an hour. A read timeout is
        the longest silence within one response, not a limit on a large transfer."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout),
            # One connection per thread that may call S3, so none is thrown away.
            maxsize=max(10, self.max_workers),
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
            http_client=http,
        )


def part_size_for(size: int, preferred: int) -> int:
    """The smallest part size >= preferred that keeps ``size`` within 10,000 parts."""
    part = max(preferred, MIN_PART)
    while size > part * MAX_PARTS:
        part *= 2
    return part


EMPTY = "%"  # quote() never produces a lone '%': it stands for an empty value


def encode_meta(metadata: Mapping[str, str]) -> dict[str, str]:
    """S3 user metadata must be ASCII, and HTTP trims spaces and drops empty values:
    percent-encode every value (spaces included) and mark empty ones."""
    return {k: quote(v, safe="!#$&'()*+,/:;=?@[]~") or EMPTY for k, v in metadata.items()}


def decode_meta(value: str) -> str:
    return "" if value == EMPTY else unquote(value)


#: Error codes by which S3 servers say they are out of space (MinIO's, and the generic ones
#: some S3-compatible servers use); HTTP 507 means the same whatever the code.
FULL_CODES = frozenset(
    {"XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "StorageFull", "QuotaExceeded"}
)


def is_full(exc: S3Error) -> bool:
    """Whether the S3 server refused because it (or the bucket's quota) is full."""
    return exc.code in FULL_CODES or exc.response.status == 507


def is_not_implemented(exc: StorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, S3Error) and cause.code == "NotImplemented"


def is_missing(exc: StorageError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, S3Error) and cause.code in (
        "NoSuchKey",
        "NoSuchObject",
        "NoSuchUpload",
        "NotFound",
    )
