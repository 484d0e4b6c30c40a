"""What the HTTP front needs: CORS, proxies, Location URLs, TLS and the web UI's assets."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import ConfigError, doc

__all__ = ["HttpSettings", "WebSettings"]


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """How requests are answered: CORS, forwarded headers, Location URLs."""

    cors_origins: tuple[str, ...] = field(
        default=("*",),
        metadata=doc(
            "Origins allowed by CORS (comma-separated in the environment); `*` allows any."
        ),
    )
    trust_proxy_headers: bool = field(
        default=False,
        metadata=doc(
            "Build Location URLs from Forwarded / X-Forwarded-Proto / X-Forwarded-Host. "
            "Enable only behind a proxy that sets them."
        ),
    )
    relative_location: bool = field(
        default=False,
        metadata=doc("Answer creation with a relative Location (path only)."),
    )


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    """What the listener and the web UI serve: the HTTPS certificate, the UI's assets.

    The files are checked to be readable by the start-up step, not here.
    """

    tls_cert_file: str = field(default="", metadata=doc("PEM certificate to serve HTTPS."))
    tls_key_file: str = field(default="", metadata=doc("PEM private key for HTTPS."))
    web_assets_dir: str = field(
        default="",
        metadata=doc(
            "Directory holding the npm packages of the web UI (uppy, chart.js), laid out like "
            "the `node_modules` of `npm ci`. Empty: the copies inside the installed package "
            "(a built wheel carries them), else the source checkout's `node_modules`."
        ),
    )

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file: set both tls_cert_file and tls_key_file, or neither")
