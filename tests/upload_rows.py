"""A minimal row of ``uploads`` for tests of the catalog's units of work."""

from __future__ import annotations

import datetime as dt


def upload_row(upload_id: str) -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {
        "id": upload_id,
        "owner": None,
        "length": 1,
        "offset": 0,
        "meta": {},
        "is_partial": False,
        "is_final": False,
        "state": "receiving",
        "created_at": now,
        "updated_at": now,
        "expires_at": None,
    }
