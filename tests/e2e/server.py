"""A real ``tusserver serve`` process for the end-to-end tests.

``ServerProcess(data_dir)`` starts the server on a free port of 127.0.0.1 with SQLite and the
local store under ``data_dir``, waits until ``/healthz`` answers, and can be killed (SIGKILL),
terminated (SIGTERM) and restarted on the same data directory and port. The server's output
goes to ``data_dir/server.log`` (appended across restarts), which the e2e conftest attaches to
the report of a failed test. The process handling itself is the shared harness of
:mod:`tusserver.testing` (also used by the benchmarks and examples/cluster).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from tusserver.testing import ServerError, free_port, tusserver_command, tusserver_process
from tusserver.testing import ServerProcess as _Process

__all__ = ["ServerError", "ServerProcess", "free_port"]

#: Settings every e2e server gets unless the test overrides them, each only if this server
#: version has the key (unknown TUSSERVER_* variables are a configuration error). The e2e
#: tests speak tus as anonymous clients do (tuspy, tus-js-client, raw requests) and create
#: many uploads from one IP: authentication and rate limits are off. A test that wants them
#: passes e.g. ``TUSSERVER_AUTH=jwt`` in ``env``.
DEFAULT_SETTINGS = {
    "log_format": "console",
    "log_level": "info",
    "auth": "none",
    "rate_limit_creations": "0",
    "rate_limit_api": "0",
}


def _defaults() -> dict[str, str]:
    from tusserver.config import TusServerConfig

    fields = {f.name for f in dataclasses.fields(TusServerConfig)}
    return {
        f"TUSSERVER_{key.upper()}": value
        for key, value in DEFAULT_SETTINGS.items()
        if key in fields
    }


def _command() -> list[str]:
    return tusserver_command()


class ServerProcess(_Process):
    """One ``tusserver serve`` subprocess on ``data_dir``; ``env`` adds TUSSERVER_* settings."""

    def __init__(
        self,
        data_dir: Path | str,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        start: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_env = dict(env or {})
        built = tusserver_process(self.data_dir, {**_defaults(), **self.extra_env}, port=port)
        super().__init__(
            built.argv_for, log_path=built.log_path, env=built.env, port=port, name="tusserver"
        )
        if start:
            self.start()

    @property
    def endpoint(self) -> str:
        """The tus creation URL."""
        return f"{self.url}/uploads/"

    def __enter__(self) -> ServerProcess:
        return self

    def __repr__(self) -> str:
        return f"ServerProcess({str(self.data_dir)!r}, port={self.port}, pid={self.pid})"
