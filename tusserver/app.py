"""App factories: ``create_app`` for the standalone server, ``create_tus_subapp`` to embed.

Everything the app needs is built here and hung off the app with typed keys; nothing lives at
module level. Resources (database, stores, background tasks) open and close in ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.engine import make_url

from auth.gateway import Gate, Gateway, Limit, PrincipalResolver, ResolverGate
from auth.ratelimit import MemoryRateLimiter, PostgresRateLimiter, RateLimiter
from auth.signals import SecuritySignals
from auth.tokens import TokenService
from auth.users import AuditLog, UserRepository
from storage_backends.base import ChunkStore, Lifecycle, ObjectStore, StorageError, UploadLister
from storage_backends.encryption import EncryptionKeyError, KeyRing
from storage_backends.fileio import private_dirs
from storage_backends.local import LocalChunkStore, LocalObjectStore

from .api.analytics import ANALYTICS_MAX_TTL, AnalyticsApi
from .api.auth import AuthApi
from .api.files import FilesApi
from .api.openapi import openapi_handler
from .cache import Cache, CacheCollector, LocalBus, PostgresBus
from .catalog.analytics import EventRecorder
from .catalog.db import Database, create_database
from .catalog.files import FileRecord, FileRepository
from .catalog.migrate import upgrade
from .catalog.retention import Retention
from .catalog.uploads import UploadRepository
from .catalog.usage import quota_limit
from .config import TusServerConfig
from .events import Hooks
from .http_io import HANDLER_ARGS
from .metrics import Metrics
from .middleware import add_response_headers, cors_middleware, error_middleware
from .multiproc import metrics_handler
from .observability import request_context_middleware
from .pipeline.backlog import Backlog
from .pipeline.clamav import ClamdClient
from .pipeline.media import Limits, MediaProcessor, MediaTools
from .pipeline.pipeline import Pipeline
from .pipeline.validators import ChecksumValidator, ClamAVValidator, PolicyValidator, Validator
from .pipeline.webhooks import WebhookSender
from .protocol.handlers import TusHandlers
from .settings import PipelineSettings, StorageSettings
from .startup import Resolved, resolve
from .uploads.digests import RunningDigests
from .uploads.locks import InProcessLocker, Locker
from .uploads.observer import RecordingObserver
from .uploads.orphans import OrphanSweep
from .uploads.service import UploadService
from .uploads.sweeper import Sweeper
from .web import default_assets_dir, web_routes

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
    files: FileRepository
    objects: ObjectStore
    pipeline: Pipeline
    gateway: Gateway
    events: EventRecorder
    metrics: Metrics
    cache: Cache
    cache_bus: LocalBus
    webhooks: WebhookSender | None = None
    backlog: Backlog | None = None
    owns_db: bool = True
    _started: bool = field(default=False, repr=False)
    #: The object store's readiness probe in flight: probes that come while it waits (an S3
    #: that does not answer) share it instead of each holding one of the store's threads.
    _store_probe: asyncio.Future[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.config.auto_migrate:
            await upgrade(self.db)
        for resource in (self.store, self.locker):
            if isinstance(resource, Lifecycle):
                await resource.open()
        try:
            await self.objects.open()
        except EncryptionKeyError:
            raise  # a wrong or missing master key is fatal: never store under a guess
        except StorageError as exc:
            # Uploads still work; commits wait in the chunk store and are retried.
            _log.warning("object store unavailable at start", error=str(exc))
        if self.webhooks is not None:
            await self.webhooks.start()
        if not self.config.clamd_url:
            _log.warning("no virus scan: clamd_url is not set")
        for problem in media_problems(self.config.sections.pipeline, self.pipeline.media):
            _log.warning("media probing is off", detail=problem)
        if self.config.auth == "none":
            _log.warning("auth is off: every request is trusted (auth = 'none')")
        await self.cache_bus.start()
        self.gateway.audit_log.start()
        self.events.start()
        await self.pipeline.recover()
        if self.config.role != "api":  # an api instance leaves the files to the workers
            self.pipeline.start()
        self.sweeper.start()
        _log.info(
            "tusserver ready",
            database=self.db.dialect,
            chunk_store=type(self.store).__name__,
            object_store=self.objects.kind,
            max_size=self.uploads.max_size,
        )

    async def readiness(self) -> dict[str, str]:
        """Whether the database, the object store and the scanner answer now: checked side
        by side, each within 5 seconds, so a dependency that hangs is reported as itself
        (and the answer comes within those 5 seconds)."""

        async def database() -> str:
            # Within the probe's bound, by the catalog's own deadline: a silent PostgreSQL
            # has the probe's connection terminated, not left to a cancelled statement.
            await self.db.read(
                lambda conn: conn.execute(text("SELECT 1")).scalar(),
                bound=min(self.db.timeout, _PROBE_DATABASE_S),
            )
            return "ok"

        async def object_store() -> str:
            if self._store_probe is None or self._store_probe.done():
                self._store_probe = asyncio.ensure_future(self.objects.open())
                # (Its error is each waiting probe's answer; none may be left unretrieved.)
                self._store_probe.add_done_callback(lambda f: f.cancelled() or f.exception())
            await asyncio.shield(self._store_probe)
            return "ok"

        async def scanner() -> str:
            assert self.config.clamd_url
            ok = await ClamdClient(self.config.clamd_url, timeout=5).ping()
            return "ok" if ok else "bad reply"

        async def storage() -> str:
            return await asyncio.to_thread(self._storage_space)

        probes = {"database": database, "object_store": object_store, "storage": storage}
        if self.config.clamd_url:
            probes["scanner"] = scanner
        answers = await asyncio.gather(*(_within(5, probe()) for probe in probes.values()))
        return dict(zip(probes, answers, strict=True))

    def _storage_space(self) -> str:
        """ "ok", or "full" naming the local directories the server writes to (data, the
        SQLite catalog, the local stores) whose filesystem has (almost) no space left.

        Once space is freed the check is "ok" again. S3 has no way to ask for free space: a
        full S3 answers 507 to the requests it refuses, and is logged.
        """
        config = self.config
        dirs = [config.data_dir]
        if config.chunk_store != "s3":
            dirs.append(config.uploads_dir)
        if config.object_store != "s3":
            dirs.append(config.objects_dir)
        if config.database_url:
            url = make_url(config.database_url)
            if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
                dirs.append(Path(url.database).parent)
        full: list[str] = []
        seen: set[int] = set()
        for d in dirs:
            try:
                st = os.statvfs(d)
                dev = os.stat(d).st_dev
            except OSError:
                continue  # not created yet: nothing written there
            if dev in seen:
                continue
            seen.add(dev)
            # root may write into the blocks a filesystem reserves for it; others may not
            blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
            if blocks * st.f_frsize < _MIN_FREE_BYTES:
                full.append(str(d))
        return "ok" if not full else f"full: no space left under {', '.join(full)}"

    async def stop(self) -> None:
        """Stop everything, in order; a step that fails (the database went away, S3 does not
        answer) is logged and the others still run, so files and connections are released."""
        if not self._started:
            return
        self._started = False
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("sweeper", self.sweeper.stop),
            ("pipeline", self.pipeline.stop),
            ("audit log", self.gateway.audit_log.stop),
            ("analytics", self.events.stop),
            ("hooks", self.hooks.drain),
        ]
        if self.webhooks is not None:
            steps.append(("webhooks", self.webhooks.stop))
        steps.append(("cache bus", self.cache_bus.stop))
        for name, resource in (
            ("object store", self.objects),
            ("locker", self.locker),
            ("chunk store", self.store),
        ):
            if isinstance(resource, Lifecycle):
                steps.append((name, resource.close))
        if self.owns_db:
            steps.append(("database", self.db.dispose))
        for name, step in steps:
            try:
                await step()
            except Exception:
                _log.exception("stopping failed; going on with the rest", step=name)
        _log.info("tusserver stopped")


RUNTIME = web.AppKey("tusserver_runtime", Runtime)
#: /readyz reports a local filesystem with less free space than this as full.
_MIN_FREE_BYTES = 64 * 1024
#: The readiness probe's bound on its database query (within the 5 s of every probe).
_PROBE_DATABASE_S = 4.0


def build_runtime(
    config: TusServerConfig,
    *,
    hooks: Hooks | None = None,
    database: Database | None = None,
    store: ChunkStore | None = None,
    locker: Locker | None = None,
    objects: ObjectStore | None = None,
    validators: list[Validator] | None = None,
    resolved: Resolved | None = None,
) -> Runtime:
    """Wire the services from the config; any dependency may be passed in instead.

    ``resolved`` is what the start-up step read (:func:`tusserver.startup.resolve`); it is
    read here when not given, so a key file that cannot be used raises ConfigError now.
    """
    resolved = resolved or resolve(config)
    metrics = Metrics()
    db = database or create_database(
        config.effective_database_url, durable=config.fsync, timeout=config.database_timeout
    )
    chunk_store = store or _chunk_store(config, metrics, key_ring=resolved.key_ring)
    object_store = objects or _object_store(config, metrics, key_ring=resolved.key_ring)
    the_locker = locker or _locker(config, db, metrics)
    the_hooks = hooks or Hooks()
    sections = config.sections
    service = UploadService(
        config=sections.uploads,
        store=chunk_store,
        repo=UploadRepository(db),
        locker=the_locker,
        hooks=the_hooks,
    )
    # On SQLite an invalidation reaches only this process: with other processes writing the
    # same catalog (a worker beside an api instance, serve --workers) the cache is off.
    shared_sqlite = db.dialect != "postgresql" and (config.worker_count > 1 or config.role != "all")
    cache = Cache(
        max_entries=config.cache_max_entries, enabled=config.cache_ttl > 0 and not shared_sqlite
    )
    cache_bus = _cache_bus(db, cache)
    metrics.registry.register(CacheCollector(cache, cache_bus))
    files = FileRepository(db, cache=cache, ttl=config.cache_ttl, invalidator=cache_bus)
    policy = PolicyValidator(
        allowed=config.allowed_categories,
        max_sizes={c: config.category_max_size(c) for c in config.allowed_categories},
    )
    if validators is None:
        validators = [ChecksumValidator()]
        if config.clamd_url:
            client = ClamdClient(config.clamd_url, timeout=config.clamd_timeout)
            validators.append(ClamAVValidator(client, required=config.clamd_required))
    webhooks = (
        WebhookSender(config.webhook_urls, secret=config.webhook_secret)
        if config.webhook_urls
        else None
    )
    recorder = EventRecorder(db)
    pipeline = Pipeline(
        media=media_processor(sections.pipeline, config.data_dir),
        events=recorder,
        metrics=metrics,
        config=sections.pipeline,
        key_template=sections.storage.object_key_template,
        chunks=chunk_store,
        files=files,
        uploads=service.repo,
        objects=object_store,
        policy=policy,
        validators=validators,
        hooks=the_hooks,
        webhooks=webhooks,
    )
    pipeline.processes_here = config.role != "api"
    if (
        isinstance(the_locker, InProcessLocker)
        and config.role == "all"
        and config.worker_count == 1
    ):
        # This process alone writes its uploads: it can hash them as they arrive.
        service.digests = pipeline.digests = RunningDigests()
    service.on_finished = pipeline.take_upload
    service.first_bytes_check = pipeline.early_check
    gateway = build_gateway(
        config, db, resolved=resolved, cache=cache, invalidator=cache_bus, signals=metrics
    )
    if config.auth == "jwt":
        service.quota_limit = pipeline.quota_limit = _quota_limit(config, gateway)
    service.observer = RecordingObserver(metrics=metrics, events=recorder, audit=gateway.audit_log)
    _report_signals(metrics, gateway.audit_log, pipeline)
    sweeper = Sweeper(
        service,
        interval=config.sweep_interval,
        tombstone_retention=config.tombstone_retention,
        extra=[
            pipeline.purge_quarantine,
            Retention(
                db,
                event_retention=config.event_retention,
                audit_retention=config.audit_retention,
            ).prune,
        ],
        orphans=(
            OrphanSweep(
                chunk_store,
                service.repo,
                grace=config.orphan_grace,
                metrics=metrics,
            )
            if isinstance(chunk_store, UploadLister)
            else None
        ),
        orphan_interval=config.orphan_sweep_interval,
    )
    return Runtime(
        config=config,
        db=db,
        store=chunk_store,
        locker=the_locker,
        hooks=the_hooks,
        uploads=service,
        sweeper=sweeper,
        files=files,
        objects=object_store,
        pipeline=pipeline,
        gateway=gateway,
        events=recorder,
        metrics=metrics,
        cache=cache,
        cache_bus=cache_bus,
        webhooks=webhooks,
        backlog=Backlog(db, metrics.registry, stall_after=config.pipeline_stall_after),
        owns_db=database is None,
    )


def media_processor(
    config: PipelineSettings, data_dir: Path, tools: MediaTools | None = None
) -> MediaProcessor | None:
    """The pipeline's media step as configured, or None when media probing is off."""
    if not config.media_probe:
        return None
    return MediaProcessor(
        tools=tools or MediaTools.detect(),
        limits=Limits(
            cpu_seconds=config.media_cpu_limit,
            memory_bytes=config.media_memory_limit,
            wall_seconds=config.media_timeout,
        ),
        work_dir=data_dir / "tmp" / "media",
        max_pixels=config.max_image_pixels,
        max_duration=config.max_media_duration,
        strip_location=config.strip_location,
    )


def media_problems(config: PipelineSettings, media: MediaProcessor | None) -> list[str]:
    """What of media probing is off and why (for the start-up log and `tusserver check`)."""
    if not config.media_probe:
        return ["media_probe is false: media files are stored without checks or thumbnails"]
    return media.tools.problems() if media is not None else []


def build_gateway(
    config: TusServerConfig,
    db: Database,
    *,
    resolved: Resolved,
    cache: Cache | None = None,
    invalidator: LocalBus | None = None,
    signals: SecuritySignals | None = None,
) -> Gateway:
    """Tokens, users, audit and rate limits as configured (shared state in PostgreSQL).

    Users are cached in ``cache`` (a private one if None) for ``revocation_check_interval``
    seconds, not at all with ``cache_ttl = 0``; their changes invalidate through
    ``invalidator``.
    """
    tokens = None
    if config.auth == "jwt":
        common: dict[str, Any] = {
            "algorithm": config.jwt_algorithm,
            "jwks_url": config.jwks_url or None,
            "issuer": config.jwt_issuer,
            "audience": config.jwt_audience,
            "leeway": config.jwt_leeway,
            "access_ttl": config.access_token_ttl,
            "refresh_ttl": config.refresh_token_ttl,
        }
        if config.jwt_algorithm == "HS256":
            secret = config.jwt_secret or ("" if config.jwks_url else _generated_secret(config))
            tokens = TokenService(secret=secret, **common)
        else:
            tokens = TokenService(
                private_key=resolved.jwt_private_key, public_key=resolved.jwt_public_key, **common
            )
    limiter: RateLimiter = (
        PostgresRateLimiter(db) if db.dialect == "postgresql" else MemoryRateLimiter()
    )
    return Gateway(
        enabled=config.auth == "jwt",
        tokens=tokens,
        users=UserRepository(db, invalidator=invalidator),
        audit=AuditLog(db),
        limiter=limiter,
        limits={
            "creations": Limit(config.rate_limit_creations, config.rate_limit_creations_burst),
            "registrations": Limit(
                config.rate_limit_registrations, config.rate_limit_registrations_burst
            ),
            "api": Limit(config.rate_limit_api, config.rate_limit_api_burst),
            "logins": Limit(config.rate_limit_logins, config.rate_limit_logins_burst),
            "logins_wide": Limit(
                config.rate_limit_logins_wide, config.rate_limit_logins_wide_burst
            ),
            # A minute's worth of bytes may come at once, so any sane chunk size fits.
            "patch_bytes": Limit(config.rate_limit_patch_bytes, config.rate_limit_patch_bytes * 60),
        },
        revocation_check_interval=config.revocation_check_interval if config.cache_ttl > 0 else 0,
        # In memory, per instance: a place is held by a request in progress here.
        caps={"bodies": config.max_bodies_per_user},
        trust_forwarded=config.trust_proxy_headers,
        cache=cache,
        signals=signals,
    )


def _generated_secret(config: TusServerConfig) -> str:
    """The embedded default's HS256 secret: generated once, kept in the data directory."""
    path = config.data_dir / "jwt_secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    private_dirs(path.parent)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


def _quota_limit(
    config: TusServerConfig, gateway: Gateway
) -> Callable[[str | None], Awaitable[int | None]]:
    async def limit(owner: str | None) -> int | None:
        if owner is None:
            return None
        # The gateway's short-lived user cache: no extra query per creation without a quota.
        user = await gateway.cached_user(owner)
        if user is None:
            return config.default_quota or None
        return quota_limit(
            role=user.role, quota_bytes=user.quota_bytes, default=config.default_quota
        )

    return limit


def _report_signals(metrics: Metrics, audit: AuditLog, pipeline: Pipeline) -> None:
    """Security signals of the pipeline, reported where it decides: a counter (no
    identities in labels) and, when a user is concerned, an audit entry. (The lifecycle's
    own, quota, size and probes, go through its observer.)"""

    def rejected(owner: str | None, target: str, category: str) -> None:
        metrics.files_rejected.labels(category).inc()
        if owner is not None:
            audit.record_soon(
                "file.rejected",
                actor=owner,
                target=target,
                outcome="rejected",
                detail={"reason": category},
            )

    def integrity_error(f: FileRecord, source: str) -> None:
        metrics.integrity_errors.labels(source).inc()
        audit.record_soon(
            "file.integrity_error",
            actor=f.owner,
            target=f.id,
            outcome="error",
            detail={"source": source},
        )

    pipeline.on_rejected = rejected
    pipeline.on_integrity_error = integrity_error


def _cache_bus(db: Database, cache: Cache) -> LocalBus:
    """Invalidations in this process (SQLite), or shared with every instance (PostgreSQL)."""
    if db.dialect == "postgresql":
        url = db.url.set(drivername="postgresql")
        return PostgresBus(cache, url.render_as_string(hide_password=False), timeout=db.timeout)
    return LocalBus(cache)


def alone_on_data_dir(config: TusServerConfig) -> bool | None:
    """How a server process with ``config`` uses its ``data_dir`` with other processes: True
    when it must be the only one there (a lone ``serve`` on SQLite or the local chunk store:
    its upload locks are in memory, see :func:`_locker`), False when it shares it (lock
    files, or PostgreSQL advisory locks), None when it keeps no uploads or catalog there.
    The CLI claims the directory accordingly (``tusserver.uploads.filelocks.claim_data_dir``)."""
    sqlite = make_url(config.effective_database_url).get_backend_name() != "postgresql"
    if not sqlite and config.chunk_store != "local":
        return None
    several = config.worker_count > 1 or config.role != "all"
    in_memory = config.locker == "memory" or (config.locker == "auto" and sqlite and not several)
    return in_memory


def _locker(config: TusServerConfig, db: Database, metrics: Metrics) -> Locker:
    use_pg = config.locker == "postgres" or (config.locker == "auto" and db.dialect == "postgresql")
    if use_pg:
        from .uploads.pglocks import PostgresLocker

        url = db.url.set(drivername="postgresql")
        return PostgresLocker(
            url.render_as_string(hide_password=False),
            timeout=config.lock_timeout,
            database_timeout=config.database_timeout,
            observe_wait=metrics.lock_wait.observe,
        )
    several = config.worker_count > 1 or config.role != "all"  # other processes share the data
    if config.locker == "file" or (config.locker == "auto" and several):
        from .uploads.filelocks import FileLocker

        return FileLocker(
            config.data_dir / "locks",
            timeout=config.lock_timeout,
            observe_wait=metrics.lock_wait.observe,
        )
    return InProcessLocker(timeout=config.lock_timeout, observe_wait=metrics.lock_wait.observe)


def _s3_settings(config: StorageSettings) -> Any:
    import base64

    from storage_backends.s3 import S3Settings

    # With s3_sse = "c" the config checked it: base64 of exactly 32 bytes. Otherwise unused.
    customer_key = config.s3_sse_customer_key.strip() if config.s3_sse == "c" else ""
    return S3Settings(
        endpoint=config.s3_endpoint,
        access_key=config.s3_access_key,
        secret_key=config.s3_secret_key,
        bucket=config.s3_bucket,
        region=config.s3_region or None,
        secure=config.s3_secure,
        part_size=config.s3_part_size,
        parallel_parts=config.s3_parallel_parts,
        sse=config.s3_sse,
        sse_customer_key=base64.b64decode(customer_key) if customer_key else None,
        connect_timeout=config.s3_connect_timeout,
        read_timeout=config.s3_read_timeout,
    )


def _s3_observer(metrics: Metrics | None) -> Callable[[str, float], None] | None:
    if metrics is None:
        return None
    return lambda op, seconds: metrics.s3_seconds.labels(op).observe(seconds)


def _key_ring(ring: KeyRing | None) -> KeyRing:
    if ring is None:  # a wiring mistake, never a setting's: resolve() reads it when on
        raise RuntimeError("envelope encryption without its keys: call startup.resolve first")
    return ring


def _chunk_store(
    config: TusServerConfig, metrics: Metrics, *, key_ring: KeyRing | None
) -> ChunkStore:
    storage, encryption = config.sections.storage, config.sections.encryption
    if storage.chunk_store == "s3":
        from storage_backends.s3 import S3ChunkStore

        return S3ChunkStore(
            _s3_settings(storage),
            prefix=storage.s3_chunk_prefix,
            max_size=config.sections.uploads.max_size or None,
            observe=_s3_observer(metrics),
        )
    if encryption.enabled:
        from storage_backends.encryption import EncryptedChunkStore  # loads cryptography

        return EncryptedChunkStore(
            config.uploads_dir,
            _key_ring(key_ring),
            segment_size=encryption.encryption_segment_size,
            fsync=config.sections.uploads.fsync,
        )
    return LocalChunkStore(config.uploads_dir, fsync=config.sections.uploads.fsync)


def _object_store(
    config: TusServerConfig, metrics: Metrics | None = None, *, key_ring: KeyRing | None
) -> ObjectStore:
    storage, encryption = config.sections.storage, config.sections.encryption
    inner: ObjectStore
    if storage.object_store == "s3":
        from storage_backends.s3 import S3ObjectStore

        inner = S3ObjectStore(_s3_settings(storage), observe=_s3_observer(metrics))
    else:
        inner = LocalObjectStore(config.objects_dir, fsync=config.sections.uploads.fsync)
    if encryption.enabled:
        from storage_backends.encryption import EncryptedObjectStore  # loads cryptography

        return EncryptedObjectStore(
            inner,
            _key_ring(key_ring),
            segment_size=encryption.encryption_segment_size,
            allow_plaintext=encryption.encryption_allow_plaintext,
        )
    return inner


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
    app = _tus_app(config, rt, principal, mounted_in_ours=False)
    if runtime is None:

        async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
            await rt.start()
            yield
            await rt.stop()

        app.cleanup_ctx.append(lifecycle)
    return app


def _tus_app(
    config: TusServerConfig,
    rt: Runtime,
    principal: PrincipalResolver | None,
    *,
    mounted_in_ours: bool,
) -> web.Application:
    """The tus endpoint's application. Mounted in :func:`create_app`, whose own middlewares
    already give every request its id and CORS, and whose own signal adds the common
    response headers, it keeps only what differs: its errors are answered without a JSON
    body. In an embedder's app it has all of them (each one stands aside for an outer app
    of ours that already did its part)."""
    gate: Gate = ResolverGate(principal) if principal is not None else rt.gateway
    errors = error_middleware(json_body=False)
    app = web.Application(
        middlewares=(
            [errors]
            if mounted_in_ours
            else [request_context_middleware, cors_middleware(config.cors_origins), errors]
        ),
        client_max_size=1024**2,
        # (In effect when this app is the one served; mounted, the host app's apply.)
        handler_args=HANDLER_ARGS,
    )
    app[RUNTIME] = rt
    if not mounted_in_ours:
        app.on_response_prepare.append(add_response_headers)
    handlers = TusHandlers(
        config=config.sections.http,
        base_path=config.base_path,
        service=rt.uploads,
        files=rt.files,
        pipeline=rt.pipeline,
        gate=gate,
        metrics=rt.metrics,
    )
    app.add_routes(handlers.routes("/"))
    app.on_shutdown.append(handlers.shutdown)
    return app


async def _within(seconds: float, probe: Coroutine[Any, Any, str]) -> str:
    """A readiness probe's answer, or why it has none (an error, or no answer in time)."""
    try:
        async with asyncio.timeout(seconds):
            return await probe
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"


async def _refresh_health_gauges(rt: Runtime) -> None:
    """Dependencies up or down, and the data directory's free space, for alerting."""
    checks = await rt.readiness()  # (each check answers within its own timeout)
    for name, value in checks.items():
        rt.metrics.dependency_up.labels(name).set(1 if value == "ok" else 0)
    try:
        st = await asyncio.to_thread(os.statvfs, rt.config.data_dir)
    except OSError:
        return
    rt.metrics.data_dir_free.set(st.f_bavail * st.f_frsize)
    rt.metrics.data_dir_size.set(st.f_blocks * st.f_frsize)


async def refresh_backlog(rt: Runtime) -> dict[str, object] | None:
    """Read the pipeline backlog (and set its gauges); None if the catalog did not answer."""
    if rt.backlog is None:
        return None
    try:
        async with asyncio.timeout(5):
            return (await rt.backlog.refresh()).describe()
    except Exception as exc:
        _log.warning("pipeline backlog unreadable", error=f"{type(exc).__name__}: {exc}")
        return None


async def readiness_response(rt: Runtime) -> web.Response:
    """``/readyz``: 200 when the dependencies answer, 503 otherwise; the pipeline's backlog
    is reported beside them (a stalled backlog does not make an instance unready: uploads
    still work, the files wait for a worker)."""
    checks = await rt.readiness()
    ok = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ready" if ok else "not ready", "checks": checks}
    if checks.get("database") == "ok" and (backlog := await refresh_backlog(rt)) is not None:
        body["pipeline"] = backlog
    return web.json_response(body, status=200 if ok else 503, headers={"Cache-Control": "no-store"})


def create_app(
    config: TusServerConfig,
    *,
    hooks: Hooks | None = None,
    principal: PrincipalResolver | None = None,
) -> web.Application:
    """The standalone server: the tus endpoint at ``config.base_path`` and the service's pages."""
    rt = build_runtime(config, hooks=hooks)
    app = web.Application(
        middlewares=[
            request_context_middleware,
            rt.metrics.middleware(),
            cors_middleware(config.cors_origins),
            error_middleware(json_body=True),
        ],
        handler_args=HANDLER_ARGS,
    )
    app[RUNTIME] = rt
    app.on_response_prepare.append(add_response_headers)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await rt.start()
        yield
        await rt.stop()

    app.cleanup_ctx.append(lifecycle)

    async def stopping(_app: web.Application) -> None:
        _log.info("tusserver stopping: no new connections, finishing requests in flight")

    app.on_shutdown.insert(0, stopping)
    tus = _tus_app(config, rt, principal, mounted_in_ours=True)
    app.add_subapp(config.base_path.rstrip("/"), tus)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        return await readiness_response(rt)

    async def refresh_gauges() -> None:
        rt.metrics.pipeline_queue.set(await rt.files.pending_count())
        await _refresh_health_gauges(rt)
        await refresh_backlog(rt)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(rt.metrics, refresh_gauges))
    gate: Gate = ResolverGate(principal) if principal is not None else rt.gateway
    files_api = FilesApi(
        db=rt.db,
        files=rt.files,
        pipeline=rt.pipeline,
        uploads=rt.uploads,
        gate=gate,
        events=rt.events,
        metrics=rt.metrics,
        redirect_for=config.download_redirect,
    )
    app.add_routes(files_api.routes(""))
    app.add_routes(files_api.routes("/api/v1"))
    app.add_routes(AuthApi(config=config.sections.auth, gateway=rt.gateway).routes())
    analytics = AnalyticsApi(
        db=rt.db,
        gate=gate,
        events=rt.events,
        cache=rt.cache,
        ttl=min(config.cache_ttl, ANALYTICS_MAX_TTL),
    )
    app.add_routes(analytics.routes(""))
    app.add_routes(analytics.routes("/api/v1"))
    app.router.add_get("/api/v1/openapi.json", openapi_handler)
    app.add_routes(web_routes(config, default_assets_dir(config.web_assets_dir)))
    return app
