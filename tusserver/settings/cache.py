"""The server-side cache of file metadata, users and reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import check_at_least_one, check_non_negative_numbers, doc

__all__ = ["CacheSettings"]


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """How long and how much the cache keeps."""

    cache_ttl: float = field(
        default=30.0,
        metadata=doc(
            "Seconds a file's metadata stays in the server-side cache (writes invalidate it at "
            "once, on every instance); users are cached for `revocation_check_interval` and "
            "analytics reports for at most 5 s. 0: no caching at all."
        ),
    )
    cache_max_entries: int = field(
        default=10_000,
        metadata=doc(
            "Entries the server-side cache holds per instance (all kinds together); the least "
            "recently used go first."
        ),
    )

    def __post_init__(self) -> None:
        check_non_negative_numbers(self, "cache_ttl")
        check_at_least_one(self, "cache_max_entries")
