"""Webhooks: who is told when a file is committed or rejected."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import doc

__all__ = ["WebhookSettings"]


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """The webhook receivers and the signing key."""

    webhook_urls: tuple[str, ...] = field(
        default=(),
        metadata=doc(
            "URLs notified (POST, JSON) when a file is committed or rejected; retried with backoff."
        ),
    )
    webhook_secret: str = field(
        default="",
        metadata=doc(
            "HMAC-SHA256 key; each webhook carries `X-Tusserver-Signature: sha256=<hex>`.",
            secret=True,
        ),
    )
