"""Prometheus metrics, in a registry owned by the app (no process-global registry)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics"]

#: Labelled children kept by Metrics.child.
_MAX_CHILDREN = 1024
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "tusserver_http_requests", "HTTP requests by method and status", ["method", "status"],
            registry=r,
        )  # fmt: skip
        self.bytes_received = Counter("tusserver_bytes_received", "Upload bytes stored", registry=r)
        self.bytes_served = Counter("tusserver_bytes_served", "Bytes sent in downloads", registry=r)
        self.uploads = Counter(
            "tusserver_uploads", "Upload lifecycle events", ["event"], registry=r
        )
        self.files = Counter("tusserver_files", "Pipeline outcomes", ["outcome"], registry=r)
        self.in_flight = Gauge(
            "tusserver_patches_in_flight", "PATCH requests receiving bytes now", registry=r,
            multiprocess_mode="livesum",  # serve --workers: the sum over live processes
        )  # fmt: skip
        self.patch_seconds = Histogram(
            "tusserver_patch_duration_seconds", "PATCH latency", buckets=_LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.lock_wait = Histogram(
            "tusserver_lock_wait_seconds", "Time waiting for an upload's lock",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.pipeline_step = Histogram(
            "tusserver_pipeline_step_seconds", "Duration of pipeline steps", ["step"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.pipeline_queue = Gauge(
            "tusserver_pipeline_queue_depth", "Files waiting for validation or commit",
            registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.orphans_removed = Counter(
            "tusserver_orphaned_uploads_removed", "Chunk-store entries no upload row named "
            "(left by a crash during a creation), removed by the orphan sweep", registry=r,
        )  # fmt: skip
        self.s3_seconds = Histogram(
            "tusserver_s3_request_seconds", "S3 request latency by operation", ["op"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        # --- security signals: reasons from short fixed sets, never an identity ------------
        self.signin_failures = Counter(
            "tusserver_signin_failures", "Sign-ins refused, by reason (wrong_password, "
            "unknown_user, disabled, refresh_invalid, refresh_reused)", ["reason"], registry=r,
        )  # fmt: skip
        self.throttled_requests = Counter(
            "tusserver_throttled_requests", "Requests refused by a rate limit (429), by limit",
            ["limit"], registry=r,
        )  # fmt: skip
        self.upload_refusals = Counter(
            "tusserver_upload_refusals", "Uploads refused for their size, by reason "
            "(quota, max_size)", ["reason"], registry=r,
        )  # fmt: skip
        self.token_rejections = Counter(
            "tusserver_token_rejections", "Requests with a bad access token, by reason "
            "(expired, invalid, revoked, disabled)", ["reason"], registry=r,
        )  # fmt: skip
        self.probes = Counter(
            "tusserver_foreign_id_requests", "404s to an authenticated caller for an upload or "
            "file that exists but is someone else's, by resource", ["resource"], registry=r,
        )  # fmt: skip
        self.files_rejected = Counter(
            "tusserver_files_rejected", "Files the pipeline rejected, by reason (virus, type, "
            "size, corrupt_media, checksum, scan_failed)", ["reason"], registry=r,
        )  # fmt: skip
        self.integrity_errors = Counter(
            "tusserver_integrity_errors", "Stored bytes that failed an integrity check when "
            "read, by where they were (object, chunks)", ["source"], registry=r,
        )  # fmt: skip
        # --- health of what the service depends on (refreshed when /metrics is scraped) ----
        self.dependency_up = Gauge(
            "tusserver_dependency_up", "1 if the dependency answered the last readiness check "
            "(database, object_store, scanner)", ["dependency"], registry=r,
            multiprocess_mode="mostrecent",  # serve --workers: the last check, of any process
        )  # fmt: skip
        self.data_dir_free = Gauge(
            "tusserver_data_dir_free_bytes", "Bytes free for the service on the data directory's "
            "file system", registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.data_dir_size = Gauge(
            "tusserver_data_dir_size_bytes", "Size of the data directory's file system",
            registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        for dependency in ("database", "object_store"):
            self.dependency_up.labels(dependency)
        for reason in (
            "wrong_password",
            "unknown_user",
            "disabled",
            "refresh_invalid",
            "refresh_reused",
        ):
            self.signin_failures.labels(reason)
        for limit in ("logins", "logins_wide", "api", "creations", "patch_bytes", "bodies"):
            self.throttled_requests.labels(limit)
        for reason in ("quota", "max_size"):
            self.upload_refusals.labels(reason)
        for reason in ("expired", "invalid", "revoked", "disabled"):
            self.token_rejections.labels(reason)
        for resource in ("upload", "file"):
            self.probes.labels(resource)
        for reason in ("virus", "type", "size", "corrupt_media", "checksum", "scan_failed"):
            self.files_rejected.labels(reason)
        for source in ("object", "chunks"):
            self.integrity_errors.labels(source)

    # --- SecuritySignals (auth.signals): what the gateway and the auth API report --------

    def signin_failed(self, reason: str) -> None:
        self.signin_failures.labels(reason).inc()

    def throttled(self, limit: str) -> None:
        self.throttled_requests.labels(limit).inc()

    def token_rejected(self, reason: str) -> None:
        self.token_rejections.labels(reason).inc()

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, made once per label values: ``labels()`` takes a lock
        and builds its key on every call, and the hot ones are called for every request
        and file. At most ``_MAX_CHILDREN`` are kept (label values a client chooses, such
        as a method, stay bounded)."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*values)
            if len(self._children) < _MAX_CHILDREN:
                self._children[key] = child
        return child

    def middleware(self) -> Middleware:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                method = request.method if request.method.isalpha() else "OTHER"
                self.child(self.requests, method[:10], str(status)).inc()
                if method == "PATCH":
                    self.patch_seconds.observe(time.perf_counter() - started)

        return count

    def handler(
        self, refresh: Callable[[], Awaitable[None]] | None = None
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def metrics(_request: web.Request) -> web.Response:
            if refresh is not None:
                await refresh()
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        return metrics
