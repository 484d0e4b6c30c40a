"""Thumbnails in the object store: keys next to the file's object, stored and removed with it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from storage_backends.base import ObjectStore

__all__ = ["THUMBNAIL_SIZES", "delete_thumbnails", "store_thumbnails", "thumbnail_key"]

#: Longest side in pixels of the WebP thumbnails made for images and videos.
THUMBNAIL_SIZES = (256, 1024)
CONTENT_TYPE = "image/webp"


def thumbnail_key(storage_key: str, size: int) -> str:
    """``<file's key>.thumb-<size>.webp``: beside the file, under the same prefix."""
    return f"{storage_key}.thumb-{size}.webp"


async def store_thumbnails(
    objects: ObjectStore, storage_key: str, files: Mapping[int, Path], *, file_id: str
) -> dict[str, int]:
    """Put each thumbnail (moving the local file); returns ``{size: bytes}`` for the catalog."""
    stored: dict[str, int] = {}
    for size, path in sorted(files.items()):
        length = path.stat().st_size
        await objects.put_file(
            thumbnail_key(storage_key, size),
            path,
            content_type=CONTENT_TYPE,
            metadata={"file-id": file_id, "thumbnail": str(size)},
            consume=True,
        )
        stored[str(size)] = length
    return stored


async def delete_thumbnails(objects: ObjectStore, storage_key: str, sizes: Iterable[int]) -> None:
    """Remove a file's thumbnails (missing ones are fine; a failing store raises)."""
    for size in sizes:
        await objects.delete(thumbnail_key(storage_key, size))
