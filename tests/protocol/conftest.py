"""The protocol suite runs on every chunk store: local disk and S3 (SeaweedFS)."""

from __future__ import annotations

import secrets
from typing import Any

import pytest


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "local":
        return {}
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
