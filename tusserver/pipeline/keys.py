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
    clean = safe_filename(name, limit=150)
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
