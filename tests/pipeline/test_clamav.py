"""Virus scanning through a real clamd (its test database knows the EICAR signatures)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from tests.app_fixtures import MakeClient
from tests.pipeline.helpers import file_id_of, file_state, upload_id_of, wait_state
from tests.pipeline.test_local_pipeline import png_bytes, upload, wait_file
from tusserver.pipeline.clamav import ScanError, parse_reply
from tusserver.pipeline.validators import Candidate, ClamAVValidator, VerdictKind

# The EICAR test string, assembled here so this file itself carries no signature.
EICAR = b"".join(
    [
        b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
        b"EICAR-STANDARD-",
        b"ANTIVIRUS-TEST-FILE!",
        b"$H+H*",
    ]
)
assert len(EICAR) == 68


async def test_eicar_is_rejected_and_never_served(
    make_client: MakeClient, clamd_server: Any
) -> None:
    client = await make_client(clamd_url=clamd_server.tcp_url)
    path = await upload(client, EICAR, filename="eicar.com", filetype="text/plain")
    info = await wait_file(client, path)
    assert info["status"] == "rejected", info
    assert "virus" in info["reason"]
    assert "Eicar" in info["reason"]
    assert (await client.get(info["content_url"])).status == 404
    assert (await client.get(f"/api/v1/file/{info['id']}/content")).status == 404
    assert (await client.get(path)).status == 403
    # The clean file next to it goes through.
    clean = await wait_file(client, await upload(client, png_bytes(2000), filename="ok.png"))
    assert clean["status"] == "committed", clean
    assert clean["reason"] is None
    assert await (await client.get(clean["content_url"])).read() == png_bytes(2000)


async def test_scan_through_the_unix_socket(make_client: MakeClient, clamd_server: Any) -> None:
    client = await make_client(clamd_url=clamd_server.unix_url)
    bad = await wait_file(client, await upload(client, EICAR))
    assert bad["status"] == "rejected", bad
    assert "virus" in bad["reason"]
    data = b"just some text, nothing to see\n" * 200
    good = await wait_file(client, await upload(client, data, filename="notes.txt"))
    assert good["status"] == "committed", good
    assert await (await client.get(good["content_url"])).read() == data


async def test_eicar_inside_a_bigger_file_is_rejected(
    make_client: MakeClient, clamd_server: Any
) -> None:
    client = await make_client(clamd_url=clamd_server.tcp_url)
    # Random bytes around it, and the string astride a 64 KiB INSTREAM chunk boundary.
    at = 64 * 1024 - 30
    data = os.urandom(at) + EICAR + os.urandom(400_000)
    info = await wait_file(client, await upload(client, data, filename="archive.bin"))
    assert info["status"] == "rejected", info
    assert "virus" in info["reason"]
    assert "Tusserver-Test-EICAR-Anywhere" in info["reason"]
    assert (await client.get(info["content_url"])).status == 404
    # The same bytes without the string are clean.
    clean = data[:at] + b"-" * len(EICAR) + data[at + len(EICAR) :]
    ok = await wait_file(client, await upload(client, clean, filename="archive.bin"))
    assert ok["status"] == "committed", ok


async def test_clamd_down_file_waits_then_commits(
    make_client: MakeClient, private_clamd: Any, tmp_path: Any
) -> None:
    client = await make_client(
        clamd_url=private_clamd.tcp_url, pipeline_retry_base=0.2, pipeline_retry_max=1.0
    )
    await asyncio.to_thread(private_clamd.stop)
    data = png_bytes(3000)
    path = await upload(client, data, filename="pic.png")
    file_id = await file_id_of(client, path)
    state = await wait_state(
        client, file_id, lambda s: s["attempts"] >= 2 and s["reason"] is not None, timeout=20
    )
    assert state["status"] == "validating", state
    assert "virus scanner" in state["reason"]
    assert (tmp_path / "data" / "uploads" / upload_id_of(path)).read_bytes() == data
    assert (await client.get(f"/file/{file_id}/content")).status == 409

    await asyncio.to_thread(private_clamd.start)
    info = await wait_file(client, path, timeout=30)
    assert info["status"] == "committed", info
    assert info["reason"] is None  # scanned for real, no note
    assert await (await client.get(info["content_url"])).read() == data


async def test_clamd_down_eicar_is_not_let_through_when_it_comes_back(
    make_client: MakeClient, private_clamd: Any
) -> None:
    client = await make_client(
        clamd_url=private_clamd.unix_url, pipeline_retry_base=0.2, pipeline_retry_max=1.0
    )
    await asyncio.to_thread(private_clamd.stop)
    path = await upload(client, EICAR)
    file_id = await file_id_of(client, path)
    await wait_state(client, file_id, lambda s: s["reason"] is not None, timeout=20)
    assert (await file_state(client, file_id))["status"] == "validating"
    await asyncio.to_thread(private_clamd.start)
    info = await wait_file(client, path, timeout=30)
    assert info["status"] == "rejected", info
    assert "virus" in info["reason"]


async def test_clamd_optional_and_down_commits_with_a_note(
    make_client: MakeClient, private_clamd: Any
) -> None:
    client = await make_client(clamd_url=private_clamd.tcp_url, clamd_required=False)
    await asyncio.to_thread(private_clamd.stop)
    data = b"%PDF-1.4\n" + b"0" * 2000
    info = await wait_file(client, await upload(client, data, filename="doc.pdf"))
    assert info["status"] == "committed", info
    assert "not scanned" in info["reason"]
    assert "virus scanner" in info["reason"]
    assert await (await client.get(info["content_url"])).read() == data


@pytest.mark.parametrize(
    ("reply", "transient"),
    [
        ("stream: INSTREAM size limit exceeded. ERROR", False),
        ("stream: Can't allocate memory ERROR", True),
        ("stream: lstat() failed: No such file or directory. ERROR", True),
        ("garbage", True),
    ],
)
def test_only_an_error_of_the_stream_refuses_the_file(reply: str, transient: bool) -> None:
    """clamd's own trouble (memory, a failed call, a reply it should not give) is tried
    again, never taken as clean; a stream past clamd's limit is refused."""
    with pytest.raises(ScanError) as raised:
        parse_reply(reply)
    assert raised.value.transient is transient
    assert parse_reply("stream: OK").clean
    assert not parse_reply("stream: Eicar-Signature FOUND").clean


async def test_a_transient_clamd_error_retries_even_when_scanning_is_optional() -> None:
    class Failing:
        async def scan(self, _source: object) -> None:
            raise ScanError("clamd could not scan the file: out of memory", transient=True)

    validator = ClamAVValidator(Failing(), required=False)  # type: ignore[arg-type]
    candidate = Candidate(
        size=1, sha256="", head=b"x", detected_type="text/plain", declared_type=None,
        metadata={}, open=lambda: None,  # type: ignore[arg-type]
    )  # fmt: skip
    verdict = await validator.check(candidate)
    assert verdict.kind is VerdictKind.RETRY
