"""The ``tusserver`` command: serve, migrate, sweep, config show."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from .config import ConfigError, TusServerConfig, load_config
from .observability import configure_logging

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    # --config and --data-dir are accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help="TOML configuration file (TUSSERVER_CONFIG)"
    )
    common.add_argument(
        "--data-dir", default=argparse.SUPPRESS, help="data directory (TUSSERVER_DATA_DIR)"
    )
    p = argparse.ArgumentParser(
        prog="tusserver", description="Resumable media upload server", parents=[common]
    )
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[common])

    serve = add("serve", "run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    mig = add("migrate", "database migrations")
    mig.add_argument(
        "action", nargs="?", default="upgrade", choices=["upgrade", "downgrade", "current"]
    )
    mig.add_argument("revision", nargs="?", help="target revision (default head / -1)")
    add("sweep", "expire abandoned uploads now")
    cfg = add("config", "configuration")
    cfg.add_argument("action", choices=["show"])
    return p


def _load(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> TusServerConfig:
    overrides: dict[str, Any] = {"data_dir": getattr(args, "data_dir", None)}
    overrides.update(extra or {})
    return load_config(toml_path=getattr(args, "config", None), overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        extra = {}
        if args.command == "serve":
            extra = {"host": args.host, "port": args.port}
        config = _load(args, extra)
    except ConfigError as exc:
        print(f"tusserver: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=config.log_format, level=config.log_level)
    if args.command == "serve":
        return _serve(config)
    if args.command == "migrate":
        return asyncio.run(_migrate(config, args.action, args.revision))
    if args.command == "sweep":
        return asyncio.run(_sweep(config))
    if args.command == "config":
        print(json.dumps(config.masked(), indent=2, sort_keys=True))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


def _serve(config: TusServerConfig) -> int:
    from .app import create_app

    app = create_app(config)
    web.run_app(
        app,
        host=config.host,
        port=config.port,
        print=lambda *_: None,
        access_log=None,
        shutdown_timeout=30.0,
    )
    return 0


async def _migrate(config: TusServerConfig, action: str, revision: str | None) -> int:
    from .catalog.db import create_database
    from .catalog.migrate import current_revision, downgrade, upgrade

    db = create_database(config.effective_database_url)
    try:
        if action == "upgrade":
            await upgrade(db, revision or "head")
        elif action == "downgrade":
            await downgrade(db, revision or "-1")
        print(await current_revision(db) or "(empty)")
    finally:
        await db.dispose()
    return 0


async def _sweep(config: TusServerConfig) -> int:
    from .app import build_runtime

    rt = build_runtime(config.replace(sweep_interval=0))
    await rt.start()
    try:
        n = await rt.sweeper.sweep_once()
        print(f"expired {n} upload(s)")
    finally:
        await rt.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
