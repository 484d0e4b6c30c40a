"""One error table: every exception with an HTTP status is declared in tusserver/errors.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import tusserver.errors as errors
from tusserver.errors import TusError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tusserver", "auth", "storage_backends")


def _table() -> list[type[TusError]]:
    return [
        obj
        for name in errors.__all__
        if inspect.isclass(obj := getattr(errors, name)) and issubclass(obj, TusError)
    ]


def test_every_error_has_a_status_and_its_own_code() -> None:
    seen: dict[str, tuple[int, type[TusError]]] = {}
    for cls in _table():
        if cls is TusError or cls is errors.HookRejection:
            continue
        assert 400 <= cls.status < 600, cls
        assert cls.code and cls.code.islower(), cls
        if cls.code in seen and seen[cls.code][1] is not cls:
            # Only a subclass that says the same thing more precisely may share a code.
            other = seen[cls.code][1]
            assert issubclass(cls, other) or issubclass(other, cls), (cls, other)
            assert seen[cls.code][0] == cls.status, cls
        seen[cls.code] = (cls.status, cls)


def test_a_taken_username_is_not_an_offset_mismatch() -> None:
    assert errors.UsernameTaken.code == "username_taken"
    assert errors.UsernameTaken.status == 409
    assert errors.Conflict.code == "offset_mismatch"


def test_no_error_with_a_status_is_declared_elsewhere() -> None:
    names = {cls.__name__ for cls in _table()}
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "tusserver" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                # A private subclass is a signal its own module catches (the IETF draft's
                # digest mismatch carries which digest failed), never answered as it is.
                if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                    continue
                bases = {
                    b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
                }
                if bases & names:
                    found.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not found, found


def test_the_old_module_still_exports_the_table() -> None:
    from tusserver.protocol import errors as old

    assert old.BadRequest is errors.BadRequest
    assert old.TusError is TusError
