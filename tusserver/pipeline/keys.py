"""Object keys for committed files, from a configurable template of sanitized fields."""

from __future__ import annotations

import datetime as dt
import string

from ..http_util import safe_filename

__all__ = ["object_key", "validate_template"]

_FIELDS = frozenset({"owner", "yyyy", "mm", "dd", "file_id", "name", "ext", "category"})


def validate_template(template: str) -> None:
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = names - _FIELDS
    if unknown:
        raise ValueError(f"unknown fields in object key template: {sorted(unknown)}")


#: UTF-8 bytes of the name in a key. A key segment is a file name on the local store, where
#: 255 bytes is the most a name can have: the file id and a dash go before it, and a
#: thumbnail's suffix (".thumb-1024.webp") or a temporary file's dot and suffix around it. A
#: name of 150 characters can be 600 bytes (CJK: three each): it is cut to this instead.
_NAME_BYTES = 150


def _within_bytes(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` UTF-8 bytes, its extension kept, never mid-character."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not 0 < len(ext.encode()) <= 16:
        stem, dot, ext = name, "", ""
    room = limit - len(ext.encode()) - len(dot)
    cut = stem.encode()[:room].decode("utf-8", "ignore").rstrip(" .")
    return (cut or "file") + dot + ext


def object_key(
    template: str,
    *,
    owner: str | None,
    file_id: str,
    name: str,
    category: str,
    when: dt.datetime,
) -> str:
    """Render the key; every field is sanitized so no value can add or climb a segment."""
    clean = _within_bytes(safe_filename(name, limit=150), _NAME_BYTES)
    ext = clean.rpartition(".")[2] if "." in clean else ""
    values = {
        "owner": safe_filename(owner or "anonymous", limit=64),
        "yyyy": f"{when.year:04d}",
        "mm": f"{when.month:02d}",
        "dd": f"{when.day:02d}",
        "file_id": file_id,
        "name": clean,
        "ext": safe_filename(ext, fallback="bin", limit=16),
        "category": category,
    }
    key = template.format(**values)
    segments = [s for s in key.split("/") if s and s not in (".", "..")]
    return "/".join(segments)
