"""What the pipeline knows of a media file: which files are probed, and the facts stored.

Decoding happens in the subprocess (:mod:`.worker`); this module only classifies MIME types
and turns the subprocess's answer into :class:`MediaFacts` (the ``media`` object of the files
API and the catalog's media columns).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["IMAGE_TYPES", "MediaFacts", "container_of", "probe_kind", "shape_of"]

#: Detected types whose images are decoded (Pillow); other images are accepted unprobed.
IMAGE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "image/bmp",
        "image/x-ms-bmp",
        "image/tiff",
    }
)

#: Container names by detected type (ffprobe's format names list several per demuxer).
_CONTAINERS = {
    "video/mp4": "mp4",
    "video/x-m4v": "mp4",
    "audio/mp4": "mp4",
    "audio/x-m4a": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
    "audio/webm": "webm",
    "video/x-matroska": "matroska",
    "audio/x-matroska": "matroska",
    "video/x-msvideo": "avi",
    "video/mpeg": "mpeg",
    "video/mp2t": "mpegts",
    "video/ogg": "ogg",
    "audio/ogg": "ogg",
    "audio/mpeg": "mp3",
    "audio/x-wav": "wav",
    "audio/wav": "wav",
    "audio/vnd.wave": "wav",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/aac": "aac",
    "audio/x-aiff": "aiff",
    "video/x-flv": "flv",
    "video/3gpp": "3gp",
}


#: Video and audio types probed besides the containers above (libmagic's names for them).
_AV_TYPES = frozenset(
    {"audio/x-hx-aac-adts", "audio/x-m4a", "audio/amr", "audio/x-ms-wma", "video/x-ms-asf",
     "video/x-ms-wmv", "video/3gpp2", "audio/x-caf", "audio/opus", "audio/webm"}
)  # fmt: skip


def probe_kind(detected_type: str) -> str | None:
    """``image`` (decoded with Pillow), ``av`` (ffprobe/ffmpeg) or None (not probed).

    Only the media containers in use are probed: libmagic gives a weak audio type to much
    binary data (a first byte of 0xF0 is a MIDI SysEx, ``audio/x-syx``: 1 random or encrypted
    file in 256), which is stored as it is rather than refused as media that does not decode.
    """
    if detected_type in IMAGE_TYPES:
        return "image"
    if detected_type in _CONTAINERS or detected_type in _AV_TYPES:
        return "av"
    return None


def container_of(detected_type: str) -> str:
    return _CONTAINERS.get(detected_type, detected_type.split("/", 1)[-1].removeprefix("x-"))


def shape_of(width: int | None, height: int | None) -> str | None:
    """landscape, portrait or square (what the ``orientation`` search filter matches)."""
    if not width or not height:
        return None
    if width == height:
        return "square"
    return "landscape" if width > height else "portrait"


@dataclass(frozen=True, slots=True)
class MediaFacts:
    """The ``media`` object (exact fields per kind, see docs/api.md) and its indexed parts."""

    info: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.info["kind"])

    @property
    def width(self) -> int | None:
        value = self.info.get("width")
        return int(value) if isinstance(value, int) else None

    @property
    def height(self) -> int | None:
        value = self.info.get("height")
        return int(value) if isinstance(value, int) else None

    @property
    def duration(self) -> float | None:
        value = self.info.get("duration")
        return float(value) if isinstance(value, int | float) else None

    @property
    def shape(self) -> str | None:
        return shape_of(self.width, self.height)

    def columns(self) -> dict[str, Any]:
        """The catalog's media columns."""
        return {
            "media_kind": self.kind,
            "media_width": self.width,
            "media_height": self.height,
            "media_duration": self.duration,
            "media_orientation": self.shape,
            "media_info": dict(self.info),
        }
