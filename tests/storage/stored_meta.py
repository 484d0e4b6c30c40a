"""What LocalObjectStore keeps of an object's metadata, read and rewritten as someone with
write access to the store could: the object file's extended attribute, or (filesystems
without user xattrs, objects of earlier versions) its sidecar ``.meta/<key>.json``."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from storage_backends.local import META_XATTR


def sidecar_path(root: Path, key: str) -> Path:
    """Where the sidecar of object ``key`` of the store at ``root`` is (if it has one)."""
    return root / ".meta" / (key + ".json")


def xattr_doc(obj: Path) -> dict[str, Any] | None:
    """The metadata document in the object file's attribute; None when it has none."""
    try:
        return dict(json.loads(os.getxattr(obj, META_XATTR)))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise


def stored_doc(root: Path, key: str) -> dict[str, Any]:
    """The metadata document of object ``key``, wherever the store keeps it."""
    doc = xattr_doc(root / key)
    if doc is None:
        doc = dict(json.loads(sidecar_path(root, key).read_bytes()))
    return doc


def write_stored_doc(root: Path, key: str, doc: dict[str, Any]) -> None:
    """Replace the metadata document of object ``key`` where the store keeps it."""
    obj = root / key
    if xattr_doc(obj) is not None:
        os.setxattr(obj, META_XATTR, json.dumps(doc).encode())
    else:
        sidecar_path(root, key).write_text(json.dumps(doc))
