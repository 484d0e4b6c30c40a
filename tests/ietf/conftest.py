"""The draft suite runs on every chunk store, like the tus protocol suite: local disk and S3.

Its servers behave like production (``web.run_app``): a handler is not cancelled when its
client goes away, so an interrupted request stores what it received, as the draft asks. The
test server of aiohttp cancels such handlers unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import BaseRunner, TestServer

from tests.protocol.conftest import storage_settings

__all__ = ["aiohttp_client", "storage_settings"]


class _ProductionLikeServer(TestServer):
    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
def aiohttp_client(aiohttp_client: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def make(app: Any, **kwargs: Any) -> Any:
        if isinstance(app, web.Application):
            app = _ProductionLikeServer(app)
        return await aiohttp_client(app, **kwargs)

    return make
