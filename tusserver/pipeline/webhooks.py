"""Webhooks for file events: JSON POSTs signed with HMAC-SHA256, retried with backoff.

Redirects are never followed (a 3xx is a failed delivery: a webhook endpoint that moves must
be reconfigured, not obeyed, or a redirect could turn the server against internal hosts),
and a URL in a log line has its credentials redacted (``redact_url``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import structlog

from ..config import redact_url

__all__ = ["WebhookSender", "sign"]

_log = structlog.get_logger("tusserver.webhooks")
SIGNATURE_HEADER = "X-Tusserver-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """Delivers events in the background; a failed delivery is retried up to ``attempts``."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        secret: str,
        attempts: int = 8,
        base_delay: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self._urls = list(urls)
        self._secret = secret
        self._attempts = attempts
        self._base_delay = base_delay
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def send(self, event: str, payload: Mapping[str, Any]) -> None:
        if not self._urls or self._session is None:
            return
        body = json.dumps({"event": event, **payload}, default=str).encode()
        for url in self._urls:
            task = asyncio.get_running_loop().create_task(self._deliver(url, event, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, event: str, body: bytes) -> None:
        assert self._session is not None
        headers = {"Content-Type": "application/json", "X-Tusserver-Event": event}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        delay = self._base_delay
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._session.post(
                    url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    if resp.status < 300:
                        return
                    problem = f"status {resp.status}"
                    if 300 <= resp.status < 400:
                        problem += " (a redirect: not followed; fix the webhook URL)"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = (str(exc) or type(exc).__name__).replace(url, redact_url(url))
            _log.warning("webhook failed", url=redact_url(url), attempt=attempt, problem=problem)
            if attempt < self._attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 300.0)
        _log.error("webhook given up", url=redact_url(url), event=event)
