"""The validation pipeline: workers and retries, the type policy, clamd and media checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import (
    MAX_NUMBER,
    ConfigError,
    check_at_least_one,
    check_non_negative_numbers,
    check_not_negative,
    doc,
)

__all__ = ["CATEGORIES", "PipelineSettings"]

#: The categories of detected type, in the order the pages show them.
CATEGORIES = ("video", "audio", "image", "document", "other")


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    """What the pipeline, its validators and the media processor need."""

    pipeline_workers: int = field(
        default=2, metadata=doc("Files validated and committed concurrently per instance.")
    )
    pipeline_max_attempts: int = field(
        default=50,
        metadata=doc("Attempts before a file whose commit keeps failing is marked `failed`."),
    )
    pipeline_retry_base: float = field(
        default=1.0, metadata=doc("Seconds before the first retry; doubles each attempt.")
    )
    pipeline_retry_max: float = field(
        default=300.0, metadata=doc("Longest wait in seconds between two attempts.")
    )
    pipeline_poll_interval: float = field(
        default=2.0,
        metadata=doc("Seconds between looks for due work (retries, other instances' files)."),
    )
    pipeline_lease: float = field(
        default=900.0,
        metadata=doc(
            "Seconds a worker's claim holds a file (renewed every third of it while the worker "
            "lives). A file claimed by an instance that died is taken again after this (at once by "
            "the next process started on the same host)."
        ),
    )
    pipeline_stall_after: float = field(
        default=60.0,
        metadata=doc(
            "Seconds files may wait with no file committed or rejected by any worker before "
            "`/readyz` reports the backlog as stalled (no worker running, or all failing)."
        ),
    )
    allowed_categories: tuple[str, ...] = field(
        default=("video", "audio", "image", "document", "other"),
        metadata=doc("Categories of detected type accepted: video, audio, image, document, other."),
    )
    max_size_video: int = field(default=0, metadata=doc("Largest video in bytes (0: no limit)."))
    max_size_audio: int = field(default=0, metadata=doc("Largest audio file (0: no limit)."))
    max_size_image: int = field(default=0, metadata=doc("Largest image (0: no limit)."))
    max_size_document: int = field(default=0, metadata=doc("Largest document (0: no limit)."))
    max_size_other: int = field(
        default=0, metadata=doc("Largest file of any other type (0: no limit).")
    )
    early_type_check: bool = field(
        default=True,
        metadata=doc(
            "Sniff the first bytes at the first PATCH and refuse a forbidden type with 415."
        ),
    )
    clamd_url: str = field(
        default="",
        metadata=doc(
            "clamd to scan every file: `tcp://host:port` or `unix:///path`. Empty: no virus "
            "scan (the server says so at start)."
        ),
    )
    clamd_required: bool = field(
        default=True,
        metadata=doc(
            "With clamd unreachable, files wait in `validating` and are retried; false accepts "
            "them unscanned (recorded on the file)."
        ),
    )
    clamd_timeout: float = field(
        default=60.0, metadata=doc("Seconds to wait on clamd for one scan.")
    )
    media_probe: bool = field(
        default=True,
        metadata=doc(
            "Probe, validate and thumbnail images (Pillow) and video/audio (ffprobe/ffmpeg) in "
            "a sandboxed subprocess per file. Missing tools turn their part off (logged, and "
            "shown by `tusserver check`); false turns all of it off."
        ),
    )
    max_image_pixels: int = field(
        default=100_000_000,
        metadata=doc(
            "Largest image in pixels (width x height, as declared in its header, checked "
            "before decoding: decompression bombs are rejected). 0: no limit."
        ),
    )
    max_media_duration: float = field(
        default=0.0,
        metadata=doc("Longest video or audio file in seconds (0: no limit)."),
    )
    strip_location: bool = field(
        default=False,
        metadata=doc(
            "Remove GPS metadata from stored JPEG, PNG and WebP files (and the location tags "
            "of MP4/MOV files, remuxed by ffmpeg) before they are committed; the file says "
            "`location_stripped: true` and its sha256 is that of the stored bytes."
        ),
    )
    media_timeout: float = field(
        default=120.0,
        metadata=doc(
            "Wall-clock seconds the media subprocess may take for one file before it is "
            "killed (the file is retried, then failed)."
        ),
    )
    media_cpu_limit: int = field(
        default=60,
        metadata=doc(
            "CPU seconds the media subprocess (and each decoder it starts) may use for one "
            "file (RLIMIT_CPU); past it the file is rejected."
        ),
    )
    media_memory_limit: int = field(
        default=1024 * 1024 * 1024,
        metadata=doc(
            "Bytes of address space of the media subprocess and each decoder it starts "
            "(RLIMIT_AS); past it the file is rejected."
        ),
    )
    quarantine_retention: float = field(
        default=7 * 24 * 3600.0,
        metadata=doc("Seconds a rejected file's bytes are kept (never served) before removal."),
    )

    def __post_init__(self) -> None:
        check_not_negative(
            self,
            "max_size_video",
            "max_size_audio",
            "max_size_image",
            "max_size_document",
            "max_size_other",
            "max_image_pixels",
        )
        check_at_least_one(self, "pipeline_workers", "pipeline_max_attempts", "media_cpu_limit")
        if self.media_memory_limit < 64 * 1024 * 1024:
            raise ConfigError("media_memory_limit: must be at least 64 MiB (67108864)")
        if not 0 < self.pipeline_lease <= MAX_NUMBER:  # also refuses NaN and infinity
            raise ConfigError(f"pipeline_lease: must be positive, at most {MAX_NUMBER}")
        check_non_negative_numbers(
            self,
            "pipeline_retry_base",
            "pipeline_retry_max",
            "pipeline_poll_interval",
            "pipeline_stall_after",
            "clamd_timeout",
            "max_media_duration",
            "media_timeout",
            "quarantine_retention",
        )
        unknown = set(self.allowed_categories) - set(CATEGORIES)
        if unknown:
            raise ConfigError(f"allowed_categories: unknown {sorted(unknown)}")
        if self.clamd_url and not self.clamd_url.startswith(("tcp://", "unix://")):
            raise ConfigError("clamd_url: must start with tcp:// or unix://")

    def category_max_size(self, category: str) -> int:
        """The size limit of a category in bytes, 0 for none."""
        value: int = getattr(self, f"max_size_{category}", 0)
        return value
