"""HTTP helpers shared by the tus handlers and the files API: ranges, dispositions."""

from __future__ import annotations

import datetime as dt
import email.utils
import re
import unicodedata
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .errors import RangeNotSatisfiable

__all__ = [
    "ByteRange",
    "RangeNotSatisfiable",
    "content_disposition",
    "etag_matches",
    "not_modified",
    "parse_range",
    "safe_filename",
]


def not_modified(request: Any, etag: str, last_modified: dt.datetime) -> bool:
    """RFC 9110 section 13.2.2: If-None-Match wins; If-Modified-Since only without it."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        return etag_matches(inm, etag)
    ims = request.headers.get("If-Modified-Since")
    if ims is None or request.method not in ("GET", "HEAD"):
        return False
    try:
        since = email.utils.parsedate_to_datetime(ims)
    except (TypeError, ValueError, IndexError):
        return False  # an invalid date is ignored, as the RFC says
    if since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    return last_modified.replace(microsecond=0) <= since


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match against our ETag with the weak comparison RFC 9110 asks for."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    ours = etag.removeprefix("W/")
    return any(t.strip().removeprefix("W/") == ours for t in if_none_match.split(","))


_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})")


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One byte range of a representation of ``size`` bytes, per RFC 9110 section 14.

    None means "send the whole representation": no Range, a Range we do not support (other
    units, several ranges: the RFC lets a server ignore Range), or a syntactically invalid one.
    An unsatisfiable range raises 416 with ``Content-Range: bytes */size``.
    """
    if header is None:
        return None
    spec = header.strip()
    if "," in spec:
        return None
    m = _RANGE.fullmatch(spec)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    unsatisfiable = RangeNotSatisfiable(
        "the requested range is not satisfiable", headers={"Content-Range": f"bytes */{size}"}
    )
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise unsatisfiable
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise unsatisfiable
    return ByteRange(start, min(end, size - 1))


_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f"\\/:*?<>|]')


def safe_filename(name: str, *, fallback: str = "file", limit: int = 200) -> str:
    """A file name safe for headers and object keys: no separators, controls or dot-names."""
    if not name.isascii():  # (ASCII has no format characters and is its own NFC)
        # Drop bidi overrides and other format characters used to disguise extensions.
        name = "".join(ch for ch in name if unicodedata.category(ch) != "Cf")
        name = unicodedata.normalize("NFC", name)
    name = _UNSAFE.sub("_", name).strip(" .")
    if not name or set(name) <= {"."}:
        name = fallback
    if len(name) > limit:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            name = stem[: limit - len(ext) - 1] + "." + ext
        else:
            name = name[:limit].rstrip(" .") or fallback
    return name


def content_disposition(name: str | None, *, inline: bool = False) -> str:
    """``attachment; filename="ascii"; filename*=UTF-8''utf8`` (RFC 6266 / RFC 8187)."""
    kind = "inline" if inline else "attachment"
    if not name:
        return kind
    clean = safe_filename(name)
    ascii_name = clean.encode("ascii", "replace").decode("ascii").replace("?", "_")
    header = f'{kind}; filename="{ascii_name}"'
    if ascii_name != clean:
        header += f"; filename*=UTF-8''{quote(clean, safe='')}"
    return header
