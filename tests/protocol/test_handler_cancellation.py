"""A PATCH whose client disconnects mid-body, on a server run with aiohttp's
handler_cancellation=True (aiohttp's TestServer default; an option of AppRunner/run_app an
embedding application may use): the bytes already received must be kept."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from tests.app_fixtures import OCTET, TUS
from tests.ietf.helpers import RawConnection
from tests.protocol.test_core import create, head

Client = TestClient[Any, Any]


async def test_bytes_of_a_broken_patch_are_kept_when_the_handler_is_cancelled(
    client: Client,
) -> None:
    path = await create(client, 100)
    conn = await RawConnection.open(client)
    await conn.send_head(
        "PATCH", path, {**TUS, **OCTET, "Upload-Offset": "0", "Content-Length": "100"}
    )
    await conn.send(b"x" * 50)
    await asyncio.sleep(0.3)
    await conn.close()
    offset = None
    for _ in range(40):
        resp = await head(client, path)
        offset = resp.headers["Upload-Offset"]
        if offset != "0":
            break
        await asyncio.sleep(0.05)
    # "The Server SHOULD always attempt to store as much of the received data as possible."
    assert offset == "50"
