"""Where uploads in progress and committed files are stored: the local disk or S3."""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass, field

from ._base import MAX_NUMBER, ConfigError, check_at_least_one, check_non_negative_numbers, doc

__all__ = ["MAX_DOWNLOAD_REDIRECT", "StorageSettings"]

#: The longest a presigned download URL may stay valid, in seconds (docs/security.md).
MAX_DOWNLOAD_REDIRECT = 300

#: The fields an object key template may use.
_KEY_FIELDS = frozenset({"owner", "yyyy", "mm", "dd", "file_id", "name", "ext", "category"})


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """The chunk store, the object store and their S3 connection."""

    object_store: str = field(
        default="local",
        metadata=doc("Where committed files go: `local` (under `<data_dir>/objects`) or `s3`."),
    )
    object_key_template: str = field(
        # (No directory per file: on a local object store each would cost an inode and a
        # directory block per committed file.)
        default="{owner}/{yyyy}/{mm}/{dd}/{file_id}-{name}",
        metadata=doc(
            "Object key of a committed file. Fields: owner, yyyy, mm, dd, file_id, name, ext, "
            "category; each is sanitized, and file_id must appear so keys are unique. A "
            "file's key is recorded when it is committed: changing the template moves no "
            "existing object."
        ),
    )
    s3_endpoint: str = field(
        default="", metadata=doc("S3/MinIO endpoint as `host:port` (no scheme).")
    )
    s3_access_key: str = field(default="", metadata=doc("S3 access key.", secret=True))
    s3_secret_key: str = field(default="", metadata=doc("S3 secret key.", secret=True))
    s3_bucket: str = field(
        default="tusserver", metadata=doc("Bucket; created at start if missing.")
    )
    s3_region: str = field(default="", metadata=doc("S3 region (empty: the server's default)."))
    s3_secure: bool = field(default=True, metadata=doc("Use HTTPS to reach S3."))
    s3_part_size: int = field(
        default=16 * 1024 * 1024,
        metadata=doc(
            "Preferred multipart part size in bytes (at least 5 MiB; grows for huge files so "
            "10,000 parts are never exceeded)."
        ),
    )
    s3_parallel_parts: int = field(
        default=4, metadata=doc("Multipart parts uploaded in parallel per object.")
    )
    s3_connect_timeout: float = field(
        default=5.0, metadata=doc("Seconds to wait for a connection to S3 before failing.")
    )
    s3_read_timeout: float = field(
        default=30.0,
        metadata=doc(
            "Seconds S3 may stay silent within one request before the call fails (retried "
            "twice): a hung S3 answers uploads and downloads with 503 instead of holding them; "
            "a call that finds every S3 connection waiting fails after s3_connect_timeout + "
            "s3_read_timeout instead of queueing behind them."
        ),
    )
    s3_sse: str = field(
        default="",
        metadata=doc(
            "S3 server-side encryption of everything the server writes to S3 (files and uploads "
            "in progress): empty for none, `s3` (SSE-S3: keys managed by the S3 server) or `c` "
            "(SSE-C: encrypted with `s3_sse_customer_key`, sent with every request; presigned "
            "downloads are then off). Checked at start with a probe object."
        ),
    )
    s3_sse_customer_key: str = field(
        default="",
        metadata=doc(
            "The SSE-C key: base64 of exactly 32 random bytes (`openssl rand -base64 32`). "
            'Required (and only used) with `s3_sse = "c"`; losing it loses every object written '
            "with it.",
            secret=True,
        ),
    )
    chunk_store: str = field(
        default="local",
        metadata=doc(
            "Where uploads in progress live: `local` (under `<data_dir>/uploads`) or `s3` "
            "(multipart uploads in the `s3_*` bucket: instances keep no local state)."
        ),
    )
    download_redirect: float = field(
        default=0.0,
        metadata=doc(
            "Seconds a presigned S3 URL stays valid when `GET /file/{id}/content` redirects "
            "to it (307) instead of streaming through the server; 0: always stream; at most "
            "300 (a URL cannot be revoked: see docs/security.md). Only where the store can "
            "presign (S3 without SSE-C or envelope encryption)."
        ),
    )
    s3_chunk_prefix: str = field(
        default="tus/", metadata=doc("Key prefix of uploads in progress in the S3 chunk store.")
    )

    def __post_init__(self) -> None:
        check_at_least_one(self, "s3_parallel_parts")
        check_non_negative_numbers(self, "download_redirect")
        for name in ("s3_connect_timeout", "s3_read_timeout"):
            if not 0 < getattr(self, name) <= MAX_NUMBER:  # NaN and infinity too
                raise ConfigError(f"{name}: must be positive, at most {MAX_NUMBER}")
        if self.download_redirect > MAX_DOWNLOAD_REDIRECT:
            raise ConfigError(
                f"download_redirect: at most {MAX_DOWNLOAD_REDIRECT} seconds (a presigned URL "
                "cannot be revoked once handed out)"
            )
        if self.object_store not in ("local", "s3"):
            raise ConfigError("object_store: must be 'local' or 's3'")
        if self.chunk_store not in ("local", "s3"):
            raise ConfigError("chunk_store: must be 'local' or 's3'")
        if self.uses_s3:
            for name in ("s3_endpoint", "s3_access_key", "s3_secret_key", "s3_bucket"):
                if not getattr(self, name):
                    raise ConfigError(f"{name}: required when a store is 's3'")
        if self.s3_part_size < 5 * 1024 * 1024:
            raise ConfigError("s3_part_size: must be at least 5 MiB (5242880)")
        if self.s3_sse not in ("", "s3", "c"):
            raise ConfigError("s3_sse: must be empty (none), 's3' (SSE-S3) or 'c' (SSE-C)")
        if self.s3_sse == "c":
            # Checked only where it is used, like the other s3_* settings. Never echo it.
            if not self.s3_sse_customer_key.strip():
                raise ConfigError("s3_sse_customer_key: required when s3_sse is 'c'")
            try:
                raw = base64.b64decode(self.s3_sse_customer_key.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError("s3_sse_customer_key: not valid base64") from None
            if len(raw) != 32:
                raise ConfigError(
                    f"s3_sse_customer_key: must be the base64 of exactly 32 bytes, "
                    f"not {len(raw)} bytes"
                )
        if "{file_id}" not in self.object_key_template:
            raise ConfigError("object_key_template: must contain {file_id}")
        try:
            parsed = list(string.Formatter().parse(self.object_key_template))
        except ValueError as exc:
            raise ConfigError(f"object_key_template: {exc}") from None
        unknown_fields = {f for _, f, _, _ in parsed if f is not None} - _KEY_FIELDS
        if unknown_fields:
            raise ConfigError(f"object_key_template: unknown field {sorted(unknown_fields)[0]!r}")

    @property
    def uses_s3(self) -> bool:
        """Whether a store is in S3 (the ``s3_*`` connection settings are then required)."""
        return self.object_store == "s3" or self.chunk_store == "s3"
