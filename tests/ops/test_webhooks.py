"""Webhooks (#16 item 18): no redirect is followed, and no credential reaches the logs."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.app_fixtures import MakeClient
from tests.pipeline.test_local_pipeline import png_bytes, upload, wait_file
from tusserver.config import TusServerConfig, redact_url


async def test_webhooks_follow_no_redirect_and_log_no_credentials(
    make_client: MakeClient,
) -> None:
    hits: dict[str, int] = {"hook": 0, "elsewhere": 0}

    async def hook(request: web.Request) -> web.Response:
        hits["hook"] += 1
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits["elsewhere"] += 1
        return web.Response(text="followed")

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    receiver.router.add_route("*", "/elsewhere", elsewhere)
    server = TestServer(receiver)
    await server.start_server()
    try:
        url = f"http://hookuser:pa55w0rd-s3cret@127.0.0.1:{server.port}/hook?token=t0k3n-s3cret&x=1"
        with structlog.testing.capture_logs() as logs:
            client = await make_client(webhook_urls=(url,))
            info = await wait_file(client, await upload(client, png_bytes(500), filename="a.png"))
            assert info["status"] == "committed", info
            for _ in range(200):
                if hits["hook"] and any(e["event"] == "webhook failed" for e in logs):
                    break
                await asyncio.sleep(0.05)
        assert hits["hook"] >= 1
        assert hits["elsewhere"] == 0, "a webhook followed a redirect"
        failed = [e for e in logs if e["event"] == "webhook failed"]
        assert failed and "redirect" in failed[0]["problem"], failed
        text = repr(logs)
        assert "pa55w0rd-s3cret" not in text and "t0k3n-s3cret" not in text, text
        assert f"***@127.0.0.1:{server.port}/hook?token=***&x=1" in failed[0]["url"]
    finally:
        await server.close()


def test_redacted_urls_and_config_show() -> None:
    assert redact_url("https://u:p@h.example:8443/p?a=1&api_key=k&sig=s") == (
        "https://***@h.example:8443/p?a=1&api_key=***&sig=***"
    )
    assert redact_url("http://h/p") == "http://h/p"
    config = TusServerConfig(webhook_urls=("https://u:secret@h/hook",))
    assert config.masked()["webhook_urls"] == ["https://***@h/hook"]
