"""App factories: ``create_app`` for the standalone server, ``create_tus_subapp`` to embed.

Everything the app needs is built here and hung off the app with typed keys; nothing lives at
module level. Resources (database, stores, background tasks) open and close in ``cleanup_ctx``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from storage_backends.base import ChunkStore
from storage_backends.local import LocalChunkStore

from .catalog.db import Database, create_database
from .catalog.migrate import upgrade
from .catalog.uploads import UploadRepository
from .config import TusServerConfig
from .events import Hooks
from .middleware import cors_middleware, error_middleware
from .observability import request_context_middleware
from .protocol.handlers import PrincipalResolver, TusHandlers
from .uploads.locks import InProcessLocker, Locker
from .uploads.service import UploadService
from .uploads.sweeper import Sweeper

__all__ = ["RUNTIME", "Runtime", "build_runtime", "create_app", "create_tus_subapp"]

_log = structlog.get_logger("tusserver")


@dataclass
class Runtime:
    """The wired services of one server (or one embedded sub-app)."""

    config: TusServerConfig
    db: Database
    store: ChunkStore
    locker: Locker
    hooks: Hooks
    uploads: UploadService
    sweeper: Sweeper
    owns_db: bool = True
    _started: bool = field(default=False, repr=False)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.config.auto_migrate:
            await upgrade(self.db)
        open_store = getattr(self.store, "open", None)
        if open_store is not None:
            await open_store()
        self.sweeper.start()
        _log.info(
            "tusserver ready",
            database=self.db.dialect,
            store=type(self.store).__name__,
            max_size=self.uploads.max_size,
        )

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self.sweeper.stop()
        await self.hooks.drain()
        if self.owns_db:
            await self.db.dispose()


RUNTIME = web.AppKey("tusserver_runtime", Runtime)


def build_runtime(
    config: TusServerConfig,
    *,
    hooks: Hooks | None = None,
    database: Database | None = None,
    store: ChunkStore | None = None,
    locker: Locker | None = None,
) -> Runtime:
    """Wire the services from the config; any dependency may be passed in instead."""
    db = database or create_database(config.effective_database_url, durable=config.fsync)
    chunk_store = store or LocalChunkStore(config.uploads_dir)
    the_locker = locker or InProcessLocker(timeout=config.lock_timeout)
    the_hooks = hooks or Hooks()
    service = UploadService(
        config=config,
        store=chunk_store,
        repo=UploadRepository(db),
        locker=the_locker,
        hooks=the_hooks,
    )
    sweeper = Sweeper(
        service,
        interval=config.sweep_interval,
        tombstone_retention=config.tombstone_retention,
    )
    return Runtime(
        config=config,
        db=db,
        store=chunk_store,
        locker=the_locker,
        hooks=the_hooks,
        uploads=service,
        sweeper=sweeper,
        owns_db=database is None,
    )


def create_tus_subapp(
    config: TusServerConfig,
    *,
    hooks: Hooks | None = None,
    principal: PrincipalResolver | None = None,
    runtime: Runtime | None = None,
    database: Database | None = None,
    store: ChunkStore | None = None,
    locker: Locker | None = None,
) -> web.Application:
    """The tus endpoint as an aiohttp application, to mount with ``app.add_subapp(prefix, ..)``.

    The creation URL is the mount prefix followed by ``/``; uploads live below it. The sub-app
    opens and closes its own resources unless an already-managed ``runtime`` is given.
    """
    rt = runtime or build_runtime(
        config, hooks=hooks, database=database, store=store, locker=locker
    )
    app = web.Application(
        middlewares=[
            request_context_middleware,
            cors_middleware(config.cors_origins),
            error_middleware,
        ],
        client_max_size=1024**2,
    )
    app[RUNTIME] = rt
    kwargs = {} if principal is None else {"principal": principal}
    handlers = TusHandlers(config=config, service=rt.uploads, **kwargs)
    app.add_routes(handlers.routes("/"))
    if runtime is None:

        async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
            await rt.start()
            yield
            await rt.stop()

        app.cleanup_ctx.append(lifecycle)
    return app


def create_app(config: TusServerConfig, *, hooks: Hooks | None = None) -> web.Application:
    """The standalone server: the tus endpoint at ``config.base_path`` and the service's pages."""
    rt = build_runtime(config, hooks=hooks)
    app = web.Application(
        middlewares=[
            request_context_middleware,
            cors_middleware(config.cors_origins),
            error_middleware,
        ],
    )
    app[RUNTIME] = rt

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await rt.start()
        yield
        await rt.stop()

    app.cleanup_ctx.append(lifecycle)
    tus = create_tus_subapp(config, runtime=rt)
    app.add_subapp(config.base_path.rstrip("/"), tus)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_get("/healthz", healthz)
    return app
