"""The protocol suite runs on every chunk store: local disk, S3 (SeaweedFS) and the encrypted
local store (envelope encryption at rest).

The encrypted store runs on SQLite only: what it changes is below the catalog, and the
SQLite x PostgreSQL matrix is already covered by the plaintext stores, so the suite grows by
a quarter, not a half.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from storage_backends.encryption import generate_key_spec

#: One master key for the session (what a key file would hold).
_KEY = generate_key_spec("protocol-suite")


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3), "encrypted"])
def storage_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "local":
        return {}
    if request.param == "encrypted":
        # Small segments: every upload of the suite crosses several of them.
        return {
            "encryption": "envelope",
            "encryption_keys": (_KEY,),
            "encryption_segment_size": 4096,
        }
    s3 = request.getfixturevalue("s3_server")
    return {
        "chunk_store": "s3",
        "s3_endpoint": s3.endpoint,
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
        "s3_bucket": s3.bucket,
        "s3_secure": False,
        "s3_part_size": 5 * 1024 * 1024,
        # Each test its own prefix: uploads never collide across tests and workers.
        "s3_chunk_prefix": f"tus-{secrets.token_hex(4)}/",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the encrypted store x PostgreSQL combinations (see the module docstring)."""
    here = Path(__file__).parent
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)  # only parametrized tests have one
        params = callspec.params if callspec is not None else {}
        if (
            here in item.path.parents
            and params.get("storage_settings") == "encrypted"
            and params.get("database_url") == "postgres"
        ):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
