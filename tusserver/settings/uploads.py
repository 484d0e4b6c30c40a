"""The upload lifecycle: tus limits, expiry and retention, locks, how bytes are written."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import (
    ConfigError,
    check_at_least_one,
    check_non_negative_numbers,
    check_not_negative,
    doc,
)

__all__ = ["MIN_ORPHAN_GRACE", "UploadSettings"]

#: The shortest ``orphan_grace``: a creation takes milliseconds, seconds when its store or
#: the catalog is slow; an entry younger than this may be one whose row is on its way.
MIN_ORPHAN_GRACE = 60.0


@dataclass(frozen=True, kw_only=True)
class UploadSettings:
    """What the upload service, its locks and the sweeper need."""

    max_size: int = field(
        default=0,
        metadata=doc(
            "Largest upload in bytes, advertised as Tus-Max-Size. 0: no limit beyond the store's."
        ),
    )
    max_concat_parts: int = field(
        default=100,
        metadata=doc(
            "Most partial uploads a final upload (`Upload-Concat: final;...`) may name; "
            "each at most once."
        ),
    )
    expiration: float = field(
        default=24 * 3600.0,
        metadata=doc("Seconds of inactivity after which an unfinished upload expires (0: never)."),
    )
    sweep_interval: float = field(
        default=300.0,
        metadata=doc("Seconds between runs of the expiration sweeper (0: no background sweep)."),
    )
    tombstone_retention: float = field(
        default=7 * 24 * 3600.0,
        metadata=doc(
            "Seconds a terminated or expired upload keeps answering 410 before its row is purged."
        ),
    )
    orphan_sweep_interval: float = field(
        default=3600.0,
        metadata=doc(
            "Seconds between sweeps of the chunk store for entries no upload row names (left "
            "by a crash between a creation's entry and its row), run by the sweeper: not "
            "with `sweep_interval = 0` (`tusserver sweep` runs one). 0: never."
        ),
    )
    orphan_grace: float = field(
        default=3600.0,
        metadata=doc(
            "Seconds an entry of the chunk store must have gone unmodified, by the store's "
            "own clock, before the orphan sweep may remove it for having no upload row: far "
            f"longer than a creation takes (at least {MIN_ORPHAN_GRACE:.0f})."
        ),
    )
    event_retention: float = field(
        default=90 * 24 * 3600.0,
        metadata=doc(
            "Seconds raw analytics events are kept (0: forever). Reports read the rollups, "
            "which are kept: old ranges still report after their raw events are gone."
        ),
    )
    audit_retention: float = field(
        default=365 * 24 * 3600.0,
        metadata=doc("Seconds audit-log entries are kept (0: forever)."),
    )
    fsync: bool = field(
        default=False,
        metadata=doc(
            "fsync each PATCH's bytes before acknowledging the new offset (survives power loss)."
        ),
    )
    lock_timeout: float = field(
        default=10.0,
        metadata=doc(
            "Seconds a request waits for an upload held by another request (after asking the "
            "holder to release) before it answers 423."
        ),
    )
    body_idle_timeout: float = field(
        default=60.0,
        metadata=doc(
            "Seconds a request body (PATCH, creation with content, POST /upload) may send "
            "nothing before the request is ended (408); the bytes received are kept and the "
            "offset reflects them. 0: no limit."
        ),
    )
    locker: str = field(
        default="auto",
        metadata=doc(
            "Upload locks: `memory` (one instance), `postgres` (advisory locks shared by every "
            "instance on the database), `file` (lock files under `<data_dir>/locks`, shared by "
            "the processes of one host) or `auto` (postgres when the database is PostgreSQL, "
            "else file with `workers` above 1 or a `role` other than `all`, else memory)."
        ),
    )
    write_buffer_size: int = field(
        default=256 * 1024,
        metadata=doc(
            "Bytes a PATCH body is buffered in memory before each write to storage (with one "
            "write in flight: about three of these per upload receiving bytes)."
        ),
    )

    def __post_init__(self) -> None:
        check_not_negative(self, "max_size", "write_buffer_size")
        check_at_least_one(self, "max_concat_parts")
        if self.write_buffer_size < 4096:
            raise ConfigError("write_buffer_size: must be at least 4096")
        check_non_negative_numbers(
            self,
            "expiration",
            "sweep_interval",
            "lock_timeout",
            "body_idle_timeout",
            "tombstone_retention",
            "orphan_sweep_interval",
            "orphan_grace",
            "event_retention",
            "audit_retention",
        )
        if self.orphan_grace < MIN_ORPHAN_GRACE:
            raise ConfigError(
                f"orphan_grace: must be at least {MIN_ORPHAN_GRACE:.0f} seconds (an entry "
                "younger than that may belong to a creation in flight)"
            )
        if self.locker not in ("auto", "memory", "postgres", "file"):
            raise ConfigError("locker: must be auto, memory, postgres or file")
