"""One typed configuration, from defaults, a TOML file and ``TUSSERVER_*`` variables.

Precedence: defaults < TOML file < environment < explicit overrides (CLI flags). Every key is a
field of :class:`TusServerConfig` with a ``doc`` in its metadata; ``docs/configuration.md`` is
checked against these fields by a test, so the two cannot drift.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import string
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage_backends.encryption import EncryptionKeyError, KeyRing

__all__ = ["ConfigError", "TusServerConfig", "load_config", "normalize_database_url"]

ENV_PREFIX = "TUSSERVER_"
#: The longest a presigned download URL may stay valid, in seconds (docs/security.md).
MAX_DOWNLOAD_REDIRECT = 300


class ConfigError(Exception):
    """A configuration value is missing, unknown or of the wrong type; names the key."""


def _doc(text: str, *, secret: bool = False) -> dict[str, Any]:
    return {"doc": text, "secret": secret}


@dataclass(frozen=True, kw_only=True)
class TusServerConfig:
    """Every setting of the server. Build with :func:`load_config` or directly in code."""

    # --- server ---------------------------------------------------------------------------
    host: str = field(default="127.0.0.1", metadata=_doc("Address to listen on."))
    port: int = field(default=1080, metadata=_doc("TCP port to listen on."))
    role: str = field(
        default="all",
        metadata=_doc(
            "What `tusserver serve` runs: `all` (HTTP and the pipeline, the embedded default), "
            "`api` (HTTP only: finished files wait for a `tusserver worker`) or `worker` (the "
            "pipeline only, with health and metrics on `worker_port`; what `tusserver worker` "
            "runs)."
        ),
    )
    workers: str = field(
        default="1",
        metadata=_doc(
            "Server processes sharing `port` (`serve --workers`), supervised by one parent "
            "that restarts a process that dies; `auto`: one per CPU. With more than one, "
            "upload locks work across the processes (lock files under `<data_dir>/locks`)."
        ),
    )
    worker_port: int = field(
        default=1081,
        metadata=_doc("TCP port of `tusserver worker`: only `/healthz`, `/readyz` and `/metrics`."),
    )
    data_dir: Path = field(
        default=Path("./data"),
        metadata=_doc("Directory for the embedded default: the SQLite database and local storage."),
    )
    database_url: str = field(
        default="",
        metadata=_doc(
            "URL of the catalog: `postgresql://user:pass@host/db` (also `postgres://`; both use "
            "asyncpg), `sqlite:///path/to/file.db`, or an explicit SQLAlchemy async URL such as "
            "`postgresql+asyncpg://...`. Empty: SQLite at `<data_dir>/tusserver.db`.",
            secret=True,
        ),
    )
    auto_migrate: bool = field(
        default=True,
        metadata=_doc("Apply database migrations at start (`tusserver migrate` does it by hand)."),
    )
    base_path: str = field(
        default="/uploads/",
        metadata=_doc("Path of the tus creation URL; each upload lives at `<base_path><id>`."),
    )
    # --- tus ------------------------------------------------------------------------------
    max_size: int = field(
        default=0,
        metadata=_doc(
            "Largest upload in bytes, advertised as Tus-Max-Size. 0: no limit beyond the store's."
        ),
    )
    max_concat_parts: int = field(
        default=100,
        metadata=_doc(
            "Most partial uploads a final upload (`Upload-Concat: final;...`) may name; "
            "each at most once."
        ),
    )
    expiration: float = field(
        default=24 * 3600.0,
        metadata=_doc("Seconds of inactivity after which an unfinished upload expires (0: never)."),
    )
    sweep_interval: float = field(
        default=300.0,
        metadata=_doc("Seconds between runs of the expiration sweeper (0: no background sweep)."),
    )
    tombstone_retention: float = field(
        default=7 * 24 * 3600.0,
        metadata=_doc(
            "Seconds a terminated or expired upload keeps answering 410 before its row is purged."
        ),
    )
    event_retention: float = field(
        default=90 * 24 * 3600.0,
        metadata=_doc(
            "Seconds raw analytics events are kept (0: forever). Reports read the rollups, "
            "which are kept: old ranges still report after their raw events are gone."
        ),
    )
    audit_retention: float = field(
        default=365 * 24 * 3600.0,
        metadata=_doc("Seconds audit-log entries are kept (0: forever)."),
    )
    fsync: bool = field(
        default=False,
        metadata=_doc(
            "fsync each PATCH's bytes before acknowledging the new offset (survives power loss)."
        ),
    )
    lock_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "Seconds a request waits for an upload held by another request (after asking the "
            "holder to release) before it answers 423."
        ),
    )
    body_idle_timeout: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds a request body (PATCH, creation with content, POST /upload) may send "
            "nothing before the request is ended (408); the bytes received are kept and the "
            "offset reflects them. 0: no limit."
        ),
    )
    locker: str = field(
        default="auto",
        metadata=_doc(
            "Upload locks: `memory` (one instance), `postgres` (advisory locks shared by every "
            "instance on the database), `file` (lock files under `<data_dir>/locks`, shared by "
            "the processes of one host) or `auto` (postgres when the database is PostgreSQL, "
            "else file with `workers` above 1 or a `role` other than `all`, else memory)."
        ),
    )
    write_buffer_size: int = field(
        default=256 * 1024,
        metadata=_doc(
            "Bytes a PATCH body is buffered in memory before each write to storage (with one "
            "write in flight: about three of these per upload receiving bytes)."
        ),
    )
    # --- storage --------------------------------------------------------------------------
    object_store: str = field(
        default="local",
        metadata=_doc("Where committed files go: `local` (under `<data_dir>/objects`) or `s3`."),
    )
    object_key_template: str = field(
        default="{owner}/{yyyy}/{mm}/{dd}/{file_id}/{name}",
        metadata=_doc(
            "Object key of a committed file. Fields: owner, yyyy, mm, dd, file_id, name, ext, "
            "category; each is sanitized, and file_id must appear so keys are unique."
        ),
    )
    s3_endpoint: str = field(
        default="", metadata=_doc("S3/MinIO endpoint as `host:port` (no scheme).")
    )
    s3_access_key: str = field(default="", metadata=_doc("S3 access key.", secret=True))
    s3_secret_key: str = field(default="", metadata=_doc("S3 secret key.", secret=True))
    s3_bucket: str = field(
        default="tusserver", metadata=_doc("Bucket; created at start if missing.")
    )
    s3_region: str = field(default="", metadata=_doc("S3 region (empty: the server's default)."))
    s3_secure: bool = field(default=True, metadata=_doc("Use HTTPS to reach S3."))
    s3_part_size: int = field(
        default=16 * 1024 * 1024,
        metadata=_doc(
            "Preferred multipart part size in bytes (at least 5 MiB; grows for huge files so "
            "10,000 parts are never exceeded)."
        ),
    )
    s3_parallel_parts: int = field(
        default=4, metadata=_doc("Multipart parts uploaded in parallel per object.")
    )
    s3_connect_timeout: float = field(
        default=5.0, metadata=_doc("Seconds to wait for a connection to S3 before failing.")
    )
    s3_read_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds S3 may stay silent within one request before the call fails (retried "
            "twice): a hung S3 answers uploads and downloads with 503 instead of holding them."
        ),
    )
    s3_sse: str = field(
        default="",
        metadata=_doc(
            "S3 server-side encryption of everything the server writes to S3 (files and uploads "
            "in progress): empty for none, `s3` (SSE-S3: keys managed by the S3 server) or `c` "
            "(SSE-C: encrypted with `s3_sse_customer_key`, sent with every request; presigned "
            "downloads are then off). Checked at start with a probe object."
        ),
    )
    s3_sse_customer_key: str = field(
        default="",
        metadata=_doc(
            "The SSE-C key: base64 of exactly 32 random bytes (`openssl rand -base64 32`). "
            'Required (and only used) with `s3_sse = "c"`; losing it loses every object written '
            "with it.",
            secret=True,
        ),
    )
    chunk_store: str = field(
        default="local",
        metadata=_doc(
            "Where uploads in progress live: `local` (under `<data_dir>/uploads`) or `s3` "
            "(multipart uploads in the `s3_*` bucket: instances keep no local state)."
        ),
    )
    download_redirect: float = field(
        default=0.0,
        metadata=_doc(
            "Seconds a presigned S3 URL stays valid when `GET /file/{id}/content` redirects "
            "to it (307) instead of streaming through the server; 0: always stream; at most "
            "300 (a URL cannot be revoked: see docs/security.md). Only where the store can "
            "presign (S3 without SSE-C or envelope encryption)."
        ),
    )
    s3_chunk_prefix: str = field(
        default="tus/", metadata=_doc("Key prefix of uploads in progress in the S3 chunk store.")
    )
    # --- encryption at rest ------------------------------------------------------------------
    encryption: str = field(
        default="none",
        metadata=_doc(
            "`none`, or `envelope`: AES-256-GCM in segments with a data key per file, wrapped "
            "by a master key, for the local chunk store and the object store (local, or S3 as "
            "client-side encryption). Files stored before it was turned on are refused "
            "unless `encryption_allow_plaintext` is on."
        ),
    )
    encryption_keys: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "Master keys as `id:base64-of-32-bytes` (comma-separated in the environment); "
            "`tusserver keys generate ID` makes one. Keep old keys until `keys rotate` ends.",
            secret=True,
        ),
    )
    encryption_key_file: str = field(
        default="",
        metadata=_doc("File with more master keys, one `id:base64` per line (`#` comments)."),
    )
    encryption_active_key: str = field(
        default="",
        metadata=_doc("Id of the master key that wraps new data keys (empty: the first one)."),
    )
    encryption_segment_size: int = field(
        default=256 * 1024,
        metadata=_doc(
            "Plaintext bytes per encrypted segment (4 KiB to 16 MiB): the unit a Range read "
            "decrypts; recorded per file, so changing it is safe."
        ),
    )
    encryption_allow_plaintext: bool = field(
        default=False,
        metadata=_doc(
            "With `encryption = envelope`, serve objects that have no encryption envelope "
            "(stored before encryption was turned on) as they are. Off: such an object is an "
            "integrity error (logged, 500), since whoever can write to the store could "
            "otherwise substitute a file. Turn on only while migrating old files."
        ),
    )
    # --- validation pipeline -----------------------------------------------------------------
    pipeline_workers: int = field(
        default=2, metadata=_doc("Files validated and committed concurrently per instance.")
    )
    pipeline_max_attempts: int = field(
        default=50,
        metadata=_doc("Attempts before a file whose commit keeps failing is marked `failed`."),
    )
    pipeline_retry_base: float = field(
        default=1.0, metadata=_doc("Seconds before the first retry; doubles each attempt.")
    )
    pipeline_retry_max: float = field(
        default=300.0, metadata=_doc("Longest wait in seconds between two attempts.")
    )
    pipeline_poll_interval: float = field(
        default=2.0,
        metadata=_doc("Seconds between looks for due work (retries, other instances' files)."),
    )
    pipeline_lease: float = field(
        default=900.0,
        metadata=_doc(
            "Seconds a worker's claim holds a file (renewed every third of it while the worker "
            "lives). A file claimed by an instance that died is taken again after this (at once by "
            "the next process started on the same host)."
        ),
    )
    pipeline_stall_after: float = field(
        default=60.0,
        metadata=_doc(
            "Seconds files may wait with no file committed or rejected by any worker before "
            "`/readyz` reports the backlog as stalled (no worker running, or all failing)."
        ),
    )
    allowed_categories: tuple[str, ...] = field(
        default=("video", "audio", "image", "document", "other"),
        metadata=_doc(
            "Categories of detected type accepted: video, audio, image, document, other."
        ),
    )
    max_size_video: int = field(default=0, metadata=_doc("Largest video in bytes (0: no limit)."))
    max_size_audio: int = field(default=0, metadata=_doc("Largest audio file (0: no limit)."))
    max_size_image: int = field(default=0, metadata=_doc("Largest image (0: no limit)."))
    max_size_document: int = field(default=0, metadata=_doc("Largest document (0: no limit)."))
    max_size_other: int = field(
        default=0, metadata=_doc("Largest file of any other type (0: no limit).")
    )
    early_type_check: bool = field(
        default=True,
        metadata=_doc(
            "Sniff the first bytes at the first PATCH and refuse a forbidden type with 415."
        ),
    )
    clamd_url: str = field(
        default="",
        metadata=_doc(
            "clamd to scan every file: `tcp://host:port` or `unix:///path`. Empty: no virus "
            "scan (the server says so at start)."
        ),
    )
    clamd_required: bool = field(
        default=True,
        metadata=_doc(
            "With clamd unreachable, files wait in `validating` and are retried; false accepts "
            "them unscanned (recorded on the file)."
        ),
    )
    clamd_timeout: float = field(
        default=60.0, metadata=_doc("Seconds to wait on clamd for one scan.")
    )
    media_probe: bool = field(
        default=True,
        metadata=_doc(
            "Probe, validate and thumbnail images (Pillow) and video/audio (ffprobe/ffmpeg) in "
            "a sandboxed subprocess per file. Missing tools turn their part off (logged, and "
            "shown by `tusserver check`); false turns all of it off."
        ),
    )
    max_image_pixels: int = field(
        default=100_000_000,
        metadata=_doc(
            "Largest image in pixels (width x height, as declared in its header, checked "
            "before decoding: decompression bombs are rejected). 0: no limit."
        ),
    )
    max_media_duration: float = field(
        default=0.0,
        metadata=_doc("Longest video or audio file in seconds (0: no limit)."),
    )
    strip_location: bool = field(
        default=False,
        metadata=_doc(
            "Remove GPS metadata from stored JPEG, PNG and WebP files (and the location tags "
            "of MP4/MOV files, remuxed by ffmpeg) before they are committed; the file says "
            "`location_stripped: true` and its sha256 is that of the stored bytes."
        ),
    )
    media_timeout: float = field(
        default=120.0,
        metadata=_doc(
            "Wall-clock seconds the media subprocess may take for one file before it is "
            "killed (the file is retried, then failed)."
        ),
    )
    media_cpu_limit: int = field(
        default=60,
        metadata=_doc(
            "CPU seconds the media subprocess (and each decoder it starts) may use for one "
            "file (RLIMIT_CPU); past it the file is rejected."
        ),
    )
    media_memory_limit: int = field(
        default=1024 * 1024 * 1024,
        metadata=_doc(
            "Bytes of address space of the media subprocess and each decoder it starts "
            "(RLIMIT_AS); past it the file is rejected."
        ),
    )
    quarantine_retention: float = field(
        default=7 * 24 * 3600.0,
        metadata=_doc("Seconds a rejected file's bytes are kept (never served) before removal."),
    )
    webhook_urls: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "URLs notified (POST, JSON) when a file is committed or rejected; retried with backoff."
        ),
    )
    webhook_secret: str = field(
        default="",
        metadata=_doc(
            "HMAC-SHA256 key; each webhook carries `X-Tusserver-Signature: sha256=<hex>`.",
            secret=True,
        ),
    )
    # --- HTTP -----------------------------------------------------------------------------
    cors_origins: tuple[str, ...] = field(
        default=("*",),
        metadata=_doc(
            "Origins allowed by CORS (comma-separated in the environment); `*` allows any."
        ),
    )
    trust_proxy_headers: bool = field(
        default=False,
        metadata=_doc(
            "Build Location URLs from Forwarded / X-Forwarded-Proto / X-Forwarded-Host. "
            "Enable only behind a proxy that sets them."
        ),
    )
    relative_location: bool = field(
        default=False,
        metadata=_doc("Answer creation with a relative Location (path only)."),
    )
    # --- auth -------------------------------------------------------------------------------
    auth: str = field(
        default="jwt",
        metadata=_doc(
            "`jwt` (every request needs a token) or `none` (only behind a gateway that already "
            "authenticates; logged as a warning)."
        ),
    )
    production: bool = field(
        default=False,
        metadata=_doc(
            "Refuse to start without explicit secrets (no generated JWT secret) and with "
            "insecure cookies."
        ),
    )
    jwt_secret: str = field(
        default="",
        metadata=_doc(
            "HS256 signing secret. Empty (not in production): generated once and kept in "
            "`<data_dir>/jwt_secret`.",
            secret=True,
        ),
    )
    jwt_algorithm: str = field(
        default="HS256", metadata=_doc("HS256, RS256 or ES256 (the only algorithm accepted).")
    )
    jwt_private_key_file: str = field(
        default="", metadata=_doc("PEM private key for RS256/ES256 (to issue tokens).")
    )
    jwt_public_key_file: str = field(
        default="", metadata=_doc("PEM public key for RS256/ES256 (to verify tokens).")
    )
    jwks_url: str = field(
        default="",
        metadata=_doc(
            "JWKS URL of an external identity provider: tokens are verified with its keys and "
            "the server issues none (login is then disabled)."
        ),
    )
    jwt_issuer: str = field(default="tusserver", metadata=_doc("`iss` issued and required."))
    jwt_audience: str = field(default="tusserver", metadata=_doc("`aud` issued and required."))
    jwt_leeway: float = field(default=30.0, metadata=_doc("Clock skew tolerated, in seconds."))
    access_token_ttl: float = field(
        default=900.0, metadata=_doc("Lifetime of access tokens in seconds.")
    )
    refresh_token_ttl: float = field(
        default=30 * 24 * 3600.0, metadata=_doc("Lifetime of refresh tokens in seconds.")
    )
    revocation_check_interval: float = field(
        default=5.0,
        metadata=_doc(
            "Seconds a user's disabled/logged-out state may be cached: the bound on how late "
            "a revoked access token is still accepted."
        ),
    )
    registration_enabled: bool = field(
        default=True, metadata=_doc("Allow anyone to sign up through the API.")
    )
    default_quota: int = field(
        default=0, metadata=_doc("Bytes of storage per user unless set on the user (0: none).")
    )
    cookie_secure: bool = field(
        default=False, metadata=_doc("Mark the session cookie Secure (required in production).")
    )
    rate_limit_creations: float = field(
        default=10.0,
        metadata=_doc("Uploads a user (or IP) may create per second, sustained (0: no limit)."),
    )
    rate_limit_creations_burst: int = field(
        default=100, metadata=_doc("Burst of upload creations allowed at once.")
    )
    rate_limit_api: float = field(
        default=50.0, metadata=_doc("API requests per second per user or IP (0: no limit).")
    )
    rate_limit_api_burst: int = field(default=200, metadata=_doc("Burst of API requests."))
    rate_limit_logins: float = field(
        default=0.2,
        metadata=_doc(
            "Failed sign-ins (login, password change) per second per username and client "
            "address together, sustained. Every attempt is charged before the password is "
            "checked; a right password gets its charge back."
        ),
    )
    rate_limit_logins_burst: int = field(
        default=10,
        metadata=_doc("Failed sign-ins per username and address allowed in a burst."),
    )
    rate_limit_logins_wide: float = field(
        default=1.0,
        metadata=_doc(
            "Failed sign-ins per second per username (from every address) and per address "
            "(for every username), sustained: bounds a guesser with many addresses or "
            "usernames without letting one address lock an owner out."
        ),
    )
    rate_limit_logins_wide_burst: int = field(
        default=100,
        metadata=_doc("Failed sign-ins per username, or per address, allowed in a burst."),
    )
    rate_limit_patch_bytes: int = field(
        default=0,
        metadata=_doc(
            "PATCH bytes per second per user, sustained, with a minute's worth as burst; a "
            "PATCH over budget gets 429 with Retry-After (0: no limit)."
        ),
    )
    tls_cert_file: str = field(default="", metadata=_doc("PEM certificate to serve HTTPS."))
    tls_key_file: str = field(default="", metadata=_doc("PEM private key for HTTPS."))
    web_assets_dir: str = field(
        default="",
        metadata=_doc(
            "Directory holding the npm packages of the web UI (uppy, chart.js), laid out like "
            "the `node_modules` of `npm ci`. Empty: the copies inside the installed package "
            "(a built wheel carries them), else the source checkout's `node_modules`."
        ),
    )
    # --- cache ----------------------------------------------------------------------------
    cache_ttl: float = field(
        default=30.0,
        metadata=_doc(
            "Seconds a file's metadata stays in the server-side cache (writes invalidate it at "
            "once, on every instance); users are cached for `revocation_check_interval` and "
            "analytics reports for at most 5 s. 0: no caching at all."
        ),
    )
    cache_max_entries: int = field(
        default=10_000,
        metadata=_doc(
            "Entries the server-side cache holds per instance (all kinds together); the least "
            "recently used go first."
        ),
    )
    # --- logs -----------------------------------------------------------------------------
    log_format: str = field(
        default="console", metadata=_doc("`console` (human) or `json` (one object per line).")
    )
    log_level: str = field(default="info", metadata=_doc("debug, info, warning or error."))

    def __post_init__(self) -> None:
        if not (0 < self.port < 65536):
            raise ConfigError(f"port: {self.port} is not a TCP port")
        if not (0 < self.worker_port < 65536):
            raise ConfigError(f"worker_port: {self.worker_port} is not a TCP port")
        if self.role not in ("all", "api", "worker"):
            raise ConfigError("role: must be 'all', 'api' or 'worker'")
        if self.workers != "auto" and not (self.workers.isdigit() and int(self.workers) >= 1):
            raise ConfigError(f"workers: {self.workers!r} is not 'auto' or a number of at least 1")
        if not self.base_path.startswith("/") or not self.base_path.endswith("/"):
            raise ConfigError("base_path: must start and end with '/'")
        for name in (
            "max_size",
            "write_buffer_size",
            "max_size_video",
            "max_size_audio",
            "max_size_image",
            "max_size_document",
            "max_size_other",
            "max_image_pixels",
            "default_quota",
            "rate_limit_creations_burst",
            "rate_limit_api_burst",
            "rate_limit_logins_burst",
            "rate_limit_logins_wide_burst",
            "rate_limit_patch_bytes",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative")
        for name in (
            "s3_parallel_parts",
            "pipeline_max_attempts",
            "cache_max_entries",
            "max_concat_parts",
            "media_cpu_limit",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1")
        if self.media_memory_limit < 64 * 1024 * 1024:
            raise ConfigError("media_memory_limit: must be at least 64 MiB (67108864)")
        for name in ("pipeline_lease", "s3_connect_timeout", "s3_read_timeout"):
            if not getattr(self, name) > 0:  # NaN too
                raise ConfigError(f"{name}: must be positive")
        if self.write_buffer_size < 4096:
            raise ConfigError("write_buffer_size: must be at least 4096")
        for name in _NON_NEGATIVE_NUMBERS:
            # "not >= 0" also refuses NaN.
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name}: must be a non-negative number")
        if self.download_redirect > MAX_DOWNLOAD_REDIRECT:
            raise ConfigError(
                f"download_redirect: at most {MAX_DOWNLOAD_REDIRECT} seconds (a presigned URL "
                "cannot be revoked once handed out)"
            )
        if self.object_store not in ("local", "s3"):
            raise ConfigError("object_store: must be 'local' or 's3'")
        if self.chunk_store not in ("local", "s3"):
            raise ConfigError("chunk_store: must be 'local' or 's3'")
        if self.object_store == "s3" or self.chunk_store == "s3":
            for name in ("s3_endpoint", "s3_access_key", "s3_secret_key", "s3_bucket"):
                if not getattr(self, name):
                    raise ConfigError(f"{name}: required when a store is 's3'")
        if self.encryption not in ("none", "envelope"):
            raise ConfigError("encryption: must be 'none' or 'envelope'")
        if not 4096 <= self.encryption_segment_size <= 16 * 1024 * 1024:
            raise ConfigError("encryption_segment_size: must be between 4096 and 16777216")
        if self.encryption == "envelope":
            if self.chunk_store == "s3":
                raise ConfigError(
                    "encryption: 'envelope' covers the local chunk store only; with "
                    "chunk_store = 's3' use s3_sse"
                )
            self.key_ring()  # a missing, malformed or unknown key fails here, at start
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
        known = {"owner", "yyyy", "mm", "dd", "file_id", "name", "ext", "category"}
        unknown_fields = {f for _, f, _, _ in parsed if f is not None} - known
        if unknown_fields:
            raise ConfigError(f"object_key_template: unknown field {sorted(unknown_fields)[0]!r}")
        unknown = set(self.allowed_categories) - {"video", "audio", "image", "document", "other"}
        if unknown:
            raise ConfigError(f"allowed_categories: unknown {sorted(unknown)}")
        if self.clamd_url and not self.clamd_url.startswith(("tcp://", "unix://")):
            raise ConfigError("clamd_url: must start with tcp:// or unix://")
        if self.pipeline_workers < 1:
            raise ConfigError("pipeline_workers: must be at least 1")
        if self.locker not in ("auto", "memory", "postgres", "file"):
            raise ConfigError("locker: must be auto, memory, postgres or file")
        database_url = normalize_database_url(self.database_url) if self.database_url else ""
        if self.locker == "postgres" and not database_url.startswith("postgresql"):
            raise ConfigError("locker: 'postgres' needs a PostgreSQL database_url")
        if self.auth not in ("jwt", "none"):
            raise ConfigError("auth: must be 'jwt' or 'none'")
        if self.jwt_algorithm not in ("HS256", "RS256", "ES256"):
            raise ConfigError("jwt_algorithm: must be HS256, RS256 or ES256")
        if self.auth == "jwt" and self.production:
            if self.jwt_algorithm == "HS256" and not self.jwks_url and len(self.jwt_secret) < 32:
                raise ConfigError("jwt_secret: production needs a secret of at least 32 chars")
            if not self.cookie_secure:
                raise ConfigError("cookie_secure: must be true in production")
        if self.jwt_algorithm != "HS256" and not self.jwks_url and not self.jwt_public_key_file:
            raise ConfigError(f"jwt_public_key_file: required for {self.jwt_algorithm}")
        for name in (
            "tls_cert_file",
            "tls_key_file",
            "jwt_private_key_file",
            "jwt_public_key_file",
        ):
            value = getattr(self, name)
            if value and not os.access(value, os.R_OK):
                raise ConfigError(f"{name}: {value} is not a readable file")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file: set both tls_cert_file and tls_key_file, or neither")
        if self.log_format not in ("console", "json"):
            raise ConfigError("log_format: must be 'console' or 'json'")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: must be debug, info, warning or error")

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tusserver.db').resolve()}"

    def key_ring(self) -> KeyRing:
        """The master keys of envelope encryption (raises ConfigError naming the key)."""
        try:
            return KeyRing.from_specs(
                self.encryption_keys,
                key_file=Path(self.encryption_key_file) if self.encryption_key_file else None,
                active=self.encryption_active_key,
            )
        except EncryptionKeyError as exc:
            name = "encryption_key_file" if "key file" in str(exc) else "encryption_keys"
            if "active" in str(exc):
                name = "encryption_active_key"
            raise ConfigError(f"{name}: {exc}") from None

    @property
    def worker_count(self) -> int:
        """The number of server processes ``workers`` asks for (``auto``: the usable CPUs)."""
        if self.workers != "auto":
            return int(self.workers)
        if hasattr(os, "sched_getaffinity"):
            return max(1, len(os.sched_getaffinity(0)))
        return os.cpu_count() or 1

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    def category_max_size(self, category: str) -> int:
        """The size limit of a category in bytes, 0 for none."""
        value: int = getattr(self, f"max_size_{category}", 0)
        return value

    def replace(self, **changes: Any) -> TusServerConfig:
        return dataclasses.replace(self, **changes)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain values, secrets masked (for `config show`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            elif f.name == "webhook_urls":
                value = [redact_url(u) for u in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


_SECRET_PARAM = re.compile(
    r"(?i)^(.*[-_.]?)?(token|key|secret|signature|sig|password|passwd|pass|auth|credential"
    r"|api[-_]?key|access[-_]?token)$"
)


def redact_url(url: str) -> str:
    """``url`` fit for a log line: no user name or password, no value of a query parameter
    whose name says it is a credential (token, key, secret, signature, password...)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            query = "&".join(
                f"{urllib.parse.quote(k)}=***"
                if _SECRET_PARAM.match(k)
                else f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}"
                for k, v in pairs
            )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "<unparseable url>"


#: URL schemes accepted in ``database_url`` -> the SQLAlchemy async driver URL scheme.
_DATABASE_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgres+asyncpg": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg_async",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
#: Synchronous drivers SQLAlchemy knows, refused with a pointer to the async one.
_SYNC_DRIVERS = {"psycopg2", "psycopg2cffi", "pg8000", "pysqlite", "pysqlcipher", "pygresql"}

_DATABASE_URL_HELP = (
    "use postgresql://user:password@host:port/db (asyncpg) or sqlite:///path/to/file.db"
)


def normalize_database_url(url: str) -> str:
    """The SQLAlchemy async URL for a ``database_url`` setting (no I/O, no imports).

    ``postgresql://`` and ``postgres://`` (what psql and most platforms' ``DATABASE_URL``
    use) get asyncpg; ``sqlite://`` gets aiosqlite; explicit async driver URLs stay as they
    are. Anything else raises :class:`ConfigError` naming ``database_url`` and the fix.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not scheme:
        raise ConfigError(f"database_url: not a URL; {_DATABASE_URL_HELP}")
    key = scheme.lower()
    target = _DATABASE_SCHEMES.get(key)
    if target is None:
        backend, _, driver = key.partition("+")
        if backend in ("postgresql", "postgres", "sqlite") and driver in _SYNC_DRIVERS:
            raise ConfigError(
                f"database_url: the driver {driver!r} is synchronous and tusserver needs an "
                f"async one; {_DATABASE_URL_HELP}"
            )
        raise ConfigError(f"database_url: unsupported scheme {scheme!r}; {_DATABASE_URL_HELP}")
    if target == "postgresql+asyncpg" and "sslmode=" in rest:
        # libpq's sslmode (in most platforms' URLs) is asyncpg's ssl, with the same values.
        base, _, query = rest.partition("?")
        params = [
            f"ssl={p.partition('=')[2]}" if p.startswith("sslmode=") else p
            for p in query.split("&")
        ]
        rest = f"{base}?{'&'.join(params)}"
    return f"{target}://{rest}"


#: Durations and rates: numbers that must not be negative (or NaN).
_NON_NEGATIVE_NUMBERS = (
    "download_redirect",
    "expiration",
    "sweep_interval",
    "lock_timeout",
    "body_idle_timeout",
    "tombstone_retention",
    "event_retention",
    "audit_retention",
    "pipeline_retry_base",
    "pipeline_retry_max",
    "pipeline_poll_interval",
    "pipeline_stall_after",
    "clamd_timeout",
    "max_media_duration",
    "media_timeout",
    "quarantine_retention",
    "jwt_leeway",
    "access_token_ttl",
    "refresh_token_ttl",
    "revocation_check_interval",
    "cache_ttl",
    "rate_limit_creations",
    "rate_limit_api",
    "rate_limit_logins",
    "rate_limit_logins_wide",
)


#: String settings that also take a TOML integer.
_STR_OR_INT = frozenset({"workers"})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TusServerConfig)


def _coerce(name: str, raw: Any, typ: Any, *, from_env: bool) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw is None or (from_env and raw == ""):
            return None
        return _coerce(name, raw, args[0], from_env=from_env)
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            if from_env and isinstance(raw, str):
                low = raw.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
            raise ValueError
        if typ is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int):
                return raw
            if from_env and isinstance(raw, str):
                return int(raw.strip())
            raise ValueError
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int | float):
                return float(raw)
            if from_env and isinstance(raw, str):
                return float(raw.strip())
            raise ValueError
        if typ is str:
            if isinstance(raw, str):
                return raw
            if name in _STR_OR_INT and isinstance(raw, int) and not isinstance(raw, bool):
                return str(raw)  # workers = 4 as well as workers = "auto"
            raise ValueError
        if typ is Path:
            if isinstance(raw, str | Path):
                return Path(raw)
            raise ValueError
        if origin is tuple:
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            if isinstance(raw, list | tuple) and all(isinstance(x, str) for x in raw):
                return tuple(raw)
            raise ValueError
    except ValueError:
        pass
    shown = repr(raw) if len(repr(raw)) < 80 else repr(raw)[:77] + "..."
    raise ConfigError(f"{name}: {shown} is not a valid {_type_name(typ)}")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is tuple:
        return "list of strings"
    return getattr(typ, "__name__", str(typ))


def load_config(
    *,
    toml_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TusServerConfig:
    """Build the config from a TOML file, the environment and explicit overrides.

    Raises :class:`ConfigError` naming the key on an unknown key or a value of the wrong type.
    ``TUSSERVER_CONFIG`` in the environment names the TOML file when ``toml_path`` is None.
    """
    env = os.environ if environ is None else environ
    types_ = _field_types()
    values: dict[str, Any] = {}
    path = toml_path or env.get(ENV_PREFIX + "CONFIG") or None
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, raw in _flatten(data).items():
            if key not in types_:
                raise ConfigError(f"{key}: unknown configuration key (in {path})")
            values[key] = _coerce(key, raw, types_[key], from_env=False)
    for env_key, raw in env.items():
        if not env_key.startswith(ENV_PREFIX) or env_key == ENV_PREFIX + "CONFIG":
            continue
        key = env_key[len(ENV_PREFIX) :].lower()
        if key.startswith("test_"):
            continue  # reserved for the test suite's own variables
        if key not in types_:
            raise ConfigError(f"{env_key}: unknown configuration variable")
        values[key] = _coerce(env_key, raw, types_[key], from_env=True)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in types_:
            raise ConfigError(f"{key}: unknown configuration key")
        values[key] = _coerce(key, raw, types_[key], from_env=isinstance(raw, str))
    return TusServerConfig(**values)


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both flat keys and one level of tables (``[s3] bucket = ..`` is ``s3_bucket``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                out[f"{key}_{sub}"] = subvalue
        else:
            out[key] = value
    return out
