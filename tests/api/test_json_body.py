"""A JSON body that arrives in two TCP segments is still one JSON body."""

from __future__ import annotations

import asyncio
import json

from tests.app_fixtures import MakeClient
from tests.auth.helpers import PASSWORD, auth_client, make_users


async def test_login_body_split_across_segments(make_client: MakeClient) -> None:
    client = await auth_client(make_client)
    users = await make_users(client, alice="user")
    body = json.dumps({"username": users["alice"].name, "password": PASSWORD}).encode()
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"POST /api/v1/auth/login HTTP/1.1\r\n"
        + f"Host: {host}:{port}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body[:10]
    )
    await writer.drain()
    await asyncio.sleep(0.3)  # the rest of the body in a later segment, as networks do
    writer.write(body[10:])
    await writer.drain()
    status_line = await reader.readline()
    rest = await reader.read()
    writer.close()
    assert b" 200 " in status_line, status_line + rest
