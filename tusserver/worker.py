"""``tusserver worker``: the pipeline without the upload server.

A worker claims finished files from the shared catalog (the same lease and claim as the
pipeline of ``tusserver serve``), validates them and commits them to the object store. Any
number of workers and ``serve --role api`` instances share one catalog and one object store;
a file is committed by one worker, never twice.

Its HTTP side is for the platform only, on its own port (``worker_port``):

- ``/healthz``: the process is alive (liveness);
- ``/readyz``: the database, the object store (and clamd) answer, and the backlog;
- ``/metrics``: Prometheus, with the backlog gauges an autoscaler reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .app import RUNTIME, build_runtime, readiness_response, refresh_backlog
from .config import TusServerConfig
from .http_io import HANDLER_ARGS
from .middleware import add_response_headers, error_middleware
from .multiproc import metrics_handler
from .observability import request_context_middleware

__all__ = ["create_worker_app"]


def create_worker_app(config: TusServerConfig) -> web.Application:
    """The worker's runtime (pipeline, sweeper) and its health and metrics endpoints."""
    rt = build_runtime(config.replace(role="worker"))
    app = web.Application(
        middlewares=[request_context_middleware, error_middleware(json_body=True)],
        client_max_size=64 * 1024,
        handler_args=HANDLER_ARGS,
    )
    app[RUNTIME] = rt
    app.on_response_prepare.append(add_response_headers)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await rt.start()
        yield
        await rt.stop()

    app.cleanup_ctx.append(lifecycle)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": "worker"})

    async def readyz(_request: web.Request) -> web.Response:
        return await readiness_response(rt)

    async def refresh_gauges() -> None:
        rt.metrics.pipeline_queue.set(await rt.files.pending_count())
        await refresh_backlog(rt)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(rt.metrics, refresh_gauges))
    return app
