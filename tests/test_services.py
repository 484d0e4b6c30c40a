"""The test infrastructure itself: each real service answers, and can be taken down and back."""

from __future__ import annotations

import socket
import struct
import uuid
from io import BytesIO
from typing import Any

import asyncpg
import pytest
from minio.error import S3Error

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


# --- a minimal clamd INSTREAM client ---------------------------------------------------------


def clamd_connect(url: str) -> socket.socket:
    if url.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(url.removeprefix("unix://"))
        except OSError:
            sock.close()
            raise
        return sock
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def clamd_instream(url: str, data: bytes, chunk: int = 8192) -> str:
    """zINSTREAM: <u32 BE length><bytes> chunks, then a zero-length chunk; one reply."""
    with clamd_connect(url) as sock:
        sock.sendall(b"zINSTREAM\0")
        for i in range(0, len(data), chunk):
            part = data[i : i + chunk]
            sock.sendall(struct.pack(">I", len(part)) + part)
        sock.sendall(struct.pack(">I", 0))
        reply = b""
        while not reply.endswith(b"\0"):
            got = sock.recv(4096)
            if not got:
                break
            reply += got
    return reply.rstrip(b"\0").decode()


def clamd_ping(url: str) -> str:
    with clamd_connect(url) as sock:
        sock.sendall(b"zPING\0")
        return sock.recv(64).rstrip(b"\0").decode()


# --- PostgreSQL --------------------------------------------------------------------------------


async def test_postgres_select_1(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_database()") == pg_url.rsplit("/", 1)[1]
    finally:
        await conn.close()


async def test_private_postgres_down_and_up(private_postgres: Any) -> None:
    dsn = asyncpg_dsn(private_postgres.url("tus"))
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
    await conn.close()

    private_postgres.stop_server()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(dsn, timeout=5)

    private_postgres.start_server()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT v FROM t") == 42
    finally:
        await conn.close()


# --- SeaweedFS S3 ------------------------------------------------------------------------------


def test_s3_put_get_and_auth(s3_server: Any) -> None:
    client = s3_server.client()
    key = f"infra/{uuid.uuid4().hex}"
    body = b"hello tus" * 1000
    client.put_object(
        s3_server.bucket, key, BytesIO(body), len(body), metadata={"x-amz-meta-probe": "yes"}
    )
    resp = client.get_object(s3_server.bucket, key)
    try:
        assert resp.read() == body
    finally:
        resp.close()
        resp.release_conn()
    stat = client.stat_object(s3_server.bucket, key)
    assert stat.size == len(body)

    # SigV4 is enforced: a wrong secret key is rejected
    bad = s3_server.client(secret_key="not-the-secret")
    with pytest.raises(S3Error) as info:
        bad.get_object(s3_server.bucket, key)
    assert info.value.code in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}
    client.remove_object(s3_server.bucket, key)


def test_private_s3_down_and_up(private_s3: Any) -> None:
    client = private_s3.client()
    client.put_object("tus-private", "kept", BytesIO(b"survives a restart"), 18)

    private_s3.stop()
    assert not private_s3.running
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", private_s3.port)) != 0

    private_s3.start()
    resp = private_s3.client().get_object("tus-private", "kept")
    try:
        assert resp.read() == b"survives a restart"
    finally:
        resp.close()
        resp.release_conn()


# --- clamd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["tcp_url", "unix_url"])
def test_clamd_instream(clamd_server: Any, via: str) -> None:
    url = getattr(clamd_server, via)
    assert clamd_ping(url) == "PONG"
    assert clamd_instream(url, EICAR).endswith("FOUND")
    assert clamd_instream(url, EICAR + b"\n" + b"x" * 100_000).endswith("FOUND")
    assert clamd_instream(url, b"just some clean bytes\n" * 1000) == "stream: OK"
    assert clamd_instream(url, b"") == "stream: OK"


def test_private_clamd_down_and_up(private_clamd: Any) -> None:
    assert clamd_instream(private_clamd.tcp_url, EICAR).endswith("FOUND")
    private_clamd.stop()
    with pytest.raises(OSError):
        clamd_ping(private_clamd.tcp_url)
    with pytest.raises(OSError):
        clamd_ping(private_clamd.unix_url)
    private_clamd.start()
    assert clamd_ping(private_clamd.unix_url) == "PONG"
    assert clamd_instream(private_clamd.unix_url, b"clean") == "stream: OK"
