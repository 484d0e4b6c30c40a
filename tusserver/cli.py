"""The ``tusserver`` command: serve, migrate, sweep, user, pipeline, audit, config show."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from .config import ConfigError, TusServerConfig, load_config
from .observability import configure_logging
from .startup import Resolved, resolve

__all__ = ["main"]


def _quota(value: str) -> int:
    """``--quota``: bytes, not negative (a negative quota would refuse every upload)."""
    try:
        quota = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of bytes: {value!r}") from None
    if quota < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return quota


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
    serve.add_argument(
        "--role",
        choices=["all", "api", "worker"],
        help="all: HTTP and pipeline (default); api: HTTP only; worker: pipeline only (role)",
    )
    serve.add_argument(
        "--workers", help="server processes on the port: a number or 'auto' (workers)"
    )
    worker = add("worker", "run the pipeline only (health and metrics on worker_port)")
    worker.add_argument("--host")
    worker.add_argument("--port", type=int, help="port of /healthz, /readyz, /metrics")
    mig = add("migrate", "database migrations")
    mig.add_argument(
        "action", nargs="?", default="upgrade", choices=["upgrade", "downgrade", "current"]
    )
    mig.add_argument("revision", nargs="?", help="target revision (default head / -1)")
    add("sweep", "expire abandoned uploads and remove orphaned ones now")
    user = add("user", "manage users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    u_add = user_sub.add_parser(
        "add", help="create a user (password read from stdin)", parents=[common]
    )
    u_add.add_argument("username")
    u_add.add_argument("--admin", action="store_true", help="give the admin role")
    u_add.add_argument("--quota", type=_quota, help="storage quota in bytes")
    user_sub.add_parser("list", help="list users", parents=[common])
    u_dis = user_sub.add_parser(
        "disable", help="disable a user and revoke their tokens", parents=[common]
    )
    u_dis.add_argument("username")
    u_en = user_sub.add_parser("enable", help="enable a disabled user", parents=[common])
    u_en.add_argument("username")
    u_set = user_sub.add_parser("set", help="change a user's role or quota", parents=[common])
    u_set.add_argument("username")
    u_set.add_argument("--role", choices=["admin", "user"])
    quota = u_set.add_mutually_exclusive_group()
    quota.add_argument("--quota", type=_quota, help="storage quota in bytes")
    quota.add_argument("--no-quota", action="store_true", help="remove the storage quota")
    pipe = add("pipeline", "validation pipeline")
    pipe.add_argument("action", choices=["retry", "status"])
    pipe.add_argument(
        "--failed",
        action="store_true",
        help="retry: also the files the pipeline gave up on (attempts start over)",
    )
    add("check", "check that the database, object store and clamd are reachable")
    aud = add("audit", "list audit entries (who did what, from where)")
    aud.add_argument("--user", action="append", default=[], help="user name or id (repeatable)")
    aud.add_argument("--action", help="action, e.g. auth.login, or a prefix: 'auth.*'")
    aud.add_argument("--outcome", help="ok, denied, throttled, refused, rejected, error")
    aud.add_argument("--since", help="ISO 8601 time, or an age such as 15m, 2h, 7d")
    aud.add_argument("--until", help="ISO 8601 time, or an age such as 15m, 2h, 7d")
    aud.add_argument("--ip", help="client address")
    aud.add_argument("--limit", type=int, default=1000, help="newest N entries (default 1000)")
    aud.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    keys = add("keys", "master keys of encryption at rest")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    k_gen = keys_sub.add_parser(
        "generate", help="print a new master key as id:base64", parents=[common]
    )
    k_gen.add_argument("key_id")
    keys_sub.add_parser(
        "rotate",
        help="re-wrap every data key under encryption_active_key (data is not rewritten)",
        parents=[common],
    )
    sub.add_parser("upload", help="upload files (the tusup client; see `tusserver upload -h`)")
    cfg = add("config", "configuration")
    cfg.add_argument("action", choices=["show"])
    return p


def _command_index(argv: list[str]) -> int | None:
    """Where the subcommand is, skipping the global --config/--data-dir options."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "--data-dir"):
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            return i
    return None


def _load(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> TusServerConfig:
    overrides: dict[str, Any] = {"data_dir": getattr(args, "data_dir", None)}
    overrides.update(extra or {})
    return load_config(toml_path=getattr(args, "config", None), overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command_at = _command_index(argv)
    if command_at is not None and argv[command_at] == "upload":
        # The client needs no server configuration: hand over before loading any.
        from .client import main as upload_main

        return upload_main(argv[command_at + 1 :])
    args = _parser().parse_args(argv)
    try:
        extra = {}
        if args.command == "serve":
            extra = {
                "host": args.host,
                "port": args.port,
                "role": args.role,
                "workers": args.workers,
            }
        elif args.command == "worker":
            extra = {"host": args.host, "worker_port": args.port, "role": "worker"}
        config = _load(args, extra)
        if args.command == "serve" and config.role == "worker" and args.port is not None:
            # The worker role listens on worker_port, as `tusserver worker` does: --port
            # names that one then.
            config = config.replace(worker_port=args.port)
        resolved = resolve(config)  # key files and the files served, checked before anything
    except ConfigError as exc:
        print(f"tusserver: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=config.log_format, level=config.log_level)
    if args.command in ("serve", "worker", "migrate", "sweep", "user", "pipeline", "audit"):
        # Settings that name outside things (database, S3): one line each, never a traceback.
        from .preflight import preflight

        needs_objects = args.command in ("serve", "worker", "sweep", "pipeline")
        problems = asyncio.run(preflight(config, objects=needs_objects))
        for problem in problems:
            print(f"tusserver: {problem}", file=sys.stderr)
        if problems:
            return 2
    if args.command in ("serve", "worker"):
        return _serve(config)
    if args.command == "migrate":
        return asyncio.run(_migrate(config, args.action, args.revision))
    if args.command == "sweep":
        return asyncio.run(_sweep(config))
    if args.command == "user":
        return asyncio.run(_user(config, args))
    if args.command == "pipeline":
        return asyncio.run(_pipeline(config, args.action, failed=args.failed))
    if args.command == "check":
        return asyncio.run(_check(config, resolved))
    if args.command == "audit":
        return asyncio.run(_audit(config, args))
    if args.command == "keys":
        return _keys(config, args, resolved)
    if args.command == "config":
        print(json.dumps(config.masked(), indent=2, sort_keys=True))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


#: How long a server starting waits for its data directory's claim: a ``tusserver sweep``
#: (a cron job) holds one for the few seconds it runs.
_CLAIM_WAIT_S = 15.0


def _serve(config: TusServerConfig) -> int:
    from .app import alone_on_data_dir, create_app
    from .supervisor import bind_problem

    setting = "worker_port" if config.role == "worker" else "port"
    problem = bind_problem(config.host, getattr(config, setting))
    if problem is not None:  # (in use, most often: one line, before any start-up work)
        print(f"tusserver: {setting}: {problem}", file=sys.stderr)
        return 2
    # The data directory, claimed for the process's life (the supervisor's children share
    # its claim): a lone server, whose upload locks are in memory, must be the only process
    # there; two writers of one upload were otherwise both acknowledged, their bytes mixed.
    from .uploads.filelocks import DataDirInUse, claim_data_dir

    alone = alone_on_data_dir(config)
    claim: int | None = None
    if alone is not None:
        try:
            claim = claim_data_dir(config.data_dir / "locks", alone=alone, wait=_CLAIM_WAIT_S)
        except DataDirInUse as exc:
            print(f"tusserver: data_dir {config.data_dir} is in use: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"tusserver: data_dir {config.data_dir}: cannot claim it: {exc}", file=sys.stderr)
            return 2
    try:
        return _serve_on(config, create_app)
    finally:
        if claim is not None:
            os.close(claim)


def _serve_on(
    config: TusServerConfig, create_app: Callable[[TusServerConfig], web.Application]
) -> int:
    """``tusserver serve`` and ``worker`` once the port and the data directory are free."""
    _return_freed_buffers()
    _migrate_in_child(config)
    port = config.port
    app_factory: Callable[[TusServerConfig], web.Application] = create_app
    if config.role == "worker":
        from .worker import create_worker_app

        app_factory, port = create_worker_app, config.worker_port
    app_factory = _freezing_startup_objects(app_factory)
    ssl_context = None
    if config.tls_cert_file:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ssl_context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            print(f"tusserver: configuration error: tls_cert_file: {exc}", file=sys.stderr)
            return 2
    if config.worker_count > 1:
        from .supervisor import Supervisor

        return Supervisor(
            config,
            processes=config.worker_count,
            port=port,
            app_factory=app_factory,
            ssl_context=ssl_context,
        ).run()
    from .supervisor import stop_once_on_signals

    loop = asyncio.new_event_loop()
    stop_once_on_signals(loop)
    web.run_app(
        app_factory(config),
        host=config.host,
        port=port,
        ssl_context=ssl_context,
        print=lambda *_: None,
        access_log=None,
        shutdown_timeout=30.0,
        handle_signals=False,
        loop=loop,
    )
    return 0


async def _migrate(config: TusServerConfig, action: str, revision: str | None) -> int:
    from alembic.util import CommandError

    from .catalog.db import create_database
    from .catalog.migrate import current_revision, downgrade, upgrade

    db = create_database(config.effective_database_url, timeout=config.database_timeout)
    try:
        if action == "upgrade":
            await upgrade(db, revision or "head")
        elif action == "downgrade":
            await downgrade(db, revision or "-1")
        print(await current_revision(db) or "(empty)")
    except CommandError as exc:  # an unknown revision, say
        print(f"tusserver: migrate: {exc}", file=sys.stderr)
        return 2
    finally:
        await db.dispose()
    return 0


async def _sweep(config: TusServerConfig) -> int:
    from .app import alone_on_data_dir, build_runtime
    from .uploads.filelocks import DataDirInUse, claim_data_dir

    # Expiring an upload takes its lock, so that one a server is writing is skipped: the
    # sweep must see the servers' locks. On a data directory it locks as the processes that
    # share it do (lock files); a lone `serve` there keeps its locks in memory, out of reach:
    # beside one, everything but the expiry is done (those parts need no upload lock).
    claim: int | None = None
    lone_server: str | None = None
    if alone_on_data_dir(config) is not None:
        try:
            claim = claim_data_dir(config.data_dir / "locks", alone=False)
        except DataDirInUse as exc:
            lone_server = str(exc)
        except OSError as exc:
            print(f"tusserver: data_dir {config.data_dir}: cannot claim it: {exc}", file=sys.stderr)
            return 2
        else:
            if alone_on_data_dir(config):
                config = config.replace(locker="file")
    try:
        rt = build_runtime(config.replace(sweep_interval=0))
        await rt.start()
        try:
            n = await rt.sweeper.sweep_once(expire=lone_server is None)
            if lone_server is None:
                print(f"expired {n} upload(s)")
            else:
                print(
                    f"expired no upload: data_dir {config.data_dir} is in use: {lone_server}; "
                    'run that server with locker = "file" to sweep beside it, or let it '
                    "expire its uploads itself (sweep_interval above 0)"
                )
            n = await rt.sweeper.sweep_orphans()
            print(f"removed {n} orphaned upload(s)")
        finally:
            await rt.stop()
    finally:
        if claim is not None:
            os.close(claim)
    return 0


async def _user(config: TusServerConfig, args: argparse.Namespace) -> int:
    from auth.passwords import hash_password
    from auth.users import AuditLog, UserExists, UserRepository, valid_username

    from .catalog.db import create_database
    from .catalog.migrate import upgrade

    db = create_database(config.effective_database_url, timeout=config.database_timeout)
    try:
        await upgrade(db)
        users, audit = UserRepository(db), AuditLog(db)
        if args.user_command == "list":
            for u in await users.list():
                state = "disabled" if u.disabled else "active"
                quota = "-" if u.quota_bytes is None else str(u.quota_bytes)
                print(f"{u.username}\t{u.role}\t{state}\t{u.id}\t{quota}")
            return 0
        if not valid_username(args.username):
            print("tusserver: invalid username", file=sys.stderr)
            return 2
        if args.user_command == "add":
            password = sys.stdin.readline().rstrip("\r\n")  # a CRLF line ends as an LF one
            if len(password) < 8:
                print("tusserver: the password (stdin) needs 8 characters", file=sys.stderr)
                return 2
            try:
                user = await users.create(
                    args.username,
                    await hash_password(password),
                    role="admin" if args.admin else "user",
                    quota=args.quota,
                )
            except UserExists:
                print(
                    f"tusserver: user {args.username} exists (usernames are compared "
                    "without regard to case)",
                    file=sys.stderr,
                )
                return 1
            await audit.record("admin.user_add", actor="cli", target=user.id)
            print(user.id)
            return 0
        found = await users.by_name(args.username)
        if found is None:
            print(f"tusserver: no user {args.username}", file=sys.stderr)
            return 1
        if args.user_command == "set":
            changes: dict[str, Any] = {}
            if args.role is not None:
                changes["role"] = args.role
            if args.no_quota or args.quota is not None:
                changes["quota_bytes"] = None if args.no_quota else args.quota
            if not changes:
                print("tusserver: nothing to change (--role, --quota, --no-quota)", file=sys.stderr)
                return 2
            await users.update(found.id, **changes)
            await audit.record("admin.user_set", actor="cli", target=found.id, detail=dict(changes))
            return 0
        disable = args.user_command == "disable"
        await users.update(found.id, disabled=disable)
        if disable:
            await users.revoke_tokens(found.id)
        await audit.record(f"admin.user_{args.user_command}", actor="cli", target=found.id)
        return 0
    finally:
        await db.dispose()


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _when(value: str | None, now: dt.datetime) -> dt.datetime | None:
    """An ISO 8601 time (UTC unless it says otherwise) or an age before ``now`` (``15m``)."""
    if value is None:
        return None
    text = value.strip()
    if text[:-1].isdigit() and text[-1:] in _AGE_UNITS:
        try:
            return now - dt.timedelta(seconds=int(text[:-1]) * _AGE_UNITS[text[-1]])
        except OverflowError:
            raise ValueError(f"{value!r} goes back before the year 1") from None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time or an age (15m, 2h, 7d): {value!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


async def _audit(config: TusServerConfig, args: argparse.Namespace) -> int:
    from auth.users import AuditLog, UserRepository

    from .catalog.db import create_database
    from .catalog.migrate import upgrade

    now = dt.datetime.now(dt.UTC)
    try:
        since, until = _when(args.since, now), _when(args.until, now)
    except ValueError as exc:
        print(f"tusserver: {exc}", file=sys.stderr)
        return 2
    if args.limit < 1:
        print("tusserver: --limit must be at least 1", file=sys.stderr)
        return 2
    db = create_database(config.effective_database_url, timeout=config.database_timeout)
    try:
        await upgrade(db)  # as the user commands do: a new data directory has no tables yet
        users = UserRepository(db)
        names = {u.id: u.username for u in await users.list()}
        ids = {name: uid for uid, name in names.items()}
        wanted: list[str] = []
        for who in args.user:
            wanted += [who, ids[who]] if who in ids else [who, names.get(who, who)]
        entries = await AuditLog(db).search(
            users=sorted(set(wanted)),
            action=args.action,
            outcome=args.outcome,
            since=since,
            until=until,
            ip=args.ip,
            limit=args.limit,
        )
    finally:
        await db.dispose()
    rows = []
    for e in entries:
        rows.append(
            {
                "at": e["at"].astimezone(dt.UTC).isoformat(timespec="seconds"),
                "user": names.get(e["actor"] or "", e["actor"]),
                "actor": e["actor"],
                "action": e["action"],
                "outcome": e["outcome"],
                "target": e["target"],
                "ip": e["ip"],
                "detail": e["detail"] or {},
            }
        )
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True, default=str))
        return 0
    columns = ["at", "user", "action", "outcome", "target", "ip", "detail"]
    table = [columns] + [
        [
            _cell(row[c] if c != "detail" else json.dumps(row[c], sort_keys=True) if row[c] else "")
            for c in columns
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _cell(value: Any) -> str:
    """A table cell: '-' for nothing, and no control character of an entry reaches the
    terminal (targets can be what a client sent, such as a failed login's user name)."""
    if value is None or value == "":
        return "-"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


async def _pipeline(config: TusServerConfig, action: str, *, failed: bool = False) -> int:
    from .app import build_runtime

    rt = build_runtime(config.replace(sweep_interval=0, pipeline_workers=1))
    await rt.start()
    try:
        await rt.pipeline.stop()  # no background workers: do the work here, visibly
        if action == "retry":
            if failed:
                now = dt.datetime.now(dt.UTC)
                print(f"requeued {await rt.files.requeue_failed(now)} failed file(s)")
            await rt.pipeline.recover()
            await rt.files.make_all_due()
            done = 0
            while n := await rt.pipeline.run_due_once():
                done += n
            print(f"processed {done} file(s)")
        print(f"pending: {await rt.files.pending_count()}")
    finally:
        await rt.stop()
    return 0


def _migrate_in_child(config: TusServerConfig) -> None:
    """Apply pending migrations in a forked child, before the server starts.

    Alembic, Mako and Pygments stay in the server process once loaded (~9 MiB of RSS for
    its whole life); the child takes them with it when it exits. The server's own start
    then finds the catalog up to date without loading them (see catalog.migrate). When the
    child fails (database unreachable, say), the server's start meets the same problem and
    reports it as usual. Only for `tusserver serve`; no-op without fork.
    """
    if not config.auto_migrate or not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # the child: no threads, no event loop exist yet in the parent
        code = 1
        try:
            code = asyncio.run(_upgrade(config))
        except BaseException:  # reported by the server's own start
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        # The server's start runs the migrations again and reports what goes wrong.
        print(
            f"tusserver: migrating in a child process failed (status {status}); "
            "the server tries again itself",
            file=sys.stderr,
        )


async def _upgrade(config: TusServerConfig) -> int:
    from .catalog.db import create_database
    from .catalog.migrate import upgrade

    db = create_database(
        config.effective_database_url, durable=config.fsync, timeout=config.database_timeout
    )
    try:
        await upgrade(db)
    finally:
        await db.dispose()
    return 0


def _freezing_startup_objects(
    factory: Callable[[TusServerConfig], web.Application],
) -> Callable[[TusServerConfig], web.Application]:
    """The app of ``factory``, which freezes the garbage collector's objects once started
    and collects its young generation less often.

    What exists once the server is up (modules, the catalog's tables and compiled
    statements, the app and its runtime) lives as long as the process; ``gc.freeze()`` takes
    it out of the collector's sight. A full collection walked all of it: 50-70 ms with the
    event loop stopped, twice in a burst of 2,000 small uploads (``benchmarks/``). Only for a
    process the server owns (``serve``, and each ``--workers`` child): an embedding
    application decides about its own collector.
    """

    def build(config: TusServerConfig) -> web.Application:
        app = factory(config)
        app.on_startup.append(_freeze_gc)
        return app

    return build


#: Allocations (less deallocations) between two collections of the youngest generation.
#: CPython's 700 ran a collection every 4-5 small uploads; at 10,000 the collector took
#: about a third of the time it did over a burst of small uploads (``benchmarks/``), and a
#: young generation of at most that many objects holds a few MiB of cyclic garbage.
_GC_YOUNG_THRESHOLD = 10_000


async def _freeze_gc(_app: web.Application) -> None:
    import gc

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, older, oldest)


def _return_freed_buffers() -> None:
    """Keep glibc from pinning the heap at the peak of many concurrent uploads.

    By default glibc raises its mmap threshold after each large free, so big transient
    buffers (aiohttp joining several socket reads, 8 MiB PATCH bodies) move onto the heap and
    the process keeps its peak size. A fixed threshold of 512 KiB keeps the 256 KiB body
    buffers on the heap (mmap-ing each of them cost a third of large-upload throughput) and
    sends anything larger to mmap, returned when freed: peak RSS with 32 concurrent uploads
    went from ~200 to ~150 MiB. Only for `tusserver serve`: an application embedding
    tusserver keeps its own malloc settings. No-op off glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3
        libc.mallopt(m_mmap_threshold, 512 * 1024)
    except (OSError, AttributeError):
        return


def _keys(config: TusServerConfig, args: argparse.Namespace, resolved: Resolved) -> int:
    from storage_backends.base import StorageError
    from storage_backends.encryption import generate_key_spec

    if args.keys_command == "generate":
        try:
            print(generate_key_spec(args.key_id))
        except StorageError as exc:
            print(f"tusserver: {exc}", file=sys.stderr)
            return 2
        return 0
    if config.encryption != "envelope":
        print("tusserver: encryption is off (encryption = 'none'): nothing to rotate",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        return asyncio.run(_rotate(config, resolved))
    except StorageError as exc:
        print(f"tusserver: key rotation stopped: {exc}", file=sys.stderr)
        return 1


async def _rotate(config: TusServerConfig, resolved: Resolved) -> int:
    """Re-wrap data keys of uploads in progress and of objects; safe to run again."""
    from storage_backends.encryption import EncryptedChunkStore, EncryptedObjectStore

    from .app import _chunk_store, _object_store
    from .metrics import Metrics

    ring = resolved.key_ring
    assert ring is not None  # encryption is on: resolve() read the keys
    active = ring.active_id
    chunks = _chunk_store(config, Metrics(), key_ring=ring)
    objects = _object_store(config, key_ring=ring)
    if isinstance(chunks, EncryptedChunkStore):
        await chunks.open()
        report = await chunks.rotate()
        print(
            f"uploads in progress: {report.rewrapped} re-wrapped under {active!r}, "
            f"{report.already_current} already under it"
        )
    if isinstance(objects, EncryptedObjectStore):
        await objects.open()
        try:
            done = await objects.rotate()
        finally:
            await objects.close()
        print(
            f"objects: {done.rewrapped} re-wrapped under {active!r}, {done.already_current} "
            f"already under it, {done.plaintext} stored before encryption was on"
        )
    print("rotation complete: keys other than the active one may now be removed")
    return 0


async def _check(config: TusServerConfig, resolved: Resolved) -> int:
    """Reach every dependency; print what fails; non-zero when anything does."""
    from sqlalchemy.engine import make_url

    from .app import _object_store
    from .pipeline.clamav import ClamdClient, ScannerUnavailable
    from .preflight import Problem, check_database, check_object_store

    # The same checks and the same lines as the start of `serve` and `migrate`.
    problems = 0
    dialect = make_url(config.effective_database_url).get_backend_name()
    if (db_problem := await check_database(config.sections.server)) is None:
        print(f"ok    database ({dialect})")
    else:
        problems += 1
        print(f"FAIL  database: {db_problem}")
    objects = _object_store(config, key_ring=resolved.key_ring)
    store_problem: Problem | str | None = await check_object_store(config.sections.storage)
    if store_problem is None:
        try:
            await objects.open()
        except Exception as exc:
            store_problem = f"{type(exc).__name__}: {exc}"
        finally:
            close = getattr(objects, "close", None)
            if close is not None:
                await close()
    if store_problem is None:
        print(f"ok    object store ({objects.kind})")
    else:
        problems += 1
        print(f"FAIL  object store ({objects.kind}): {store_problem}")
    if config.clamd_url:
        try:
            ok = await ClamdClient(config.clamd_url, timeout=10).ping()
            print("ok    clamd" if ok else "FAIL  clamd: unexpected PING reply")
            problems += 0 if ok else 1
        except ScannerUnavailable as exc:
            problems += 1
            print(f"FAIL  clamd: {exc}")
    else:
        print("warn  clamd: not configured, files are not scanned for viruses")
    from .app import media_problems, media_processor

    pipeline = config.sections.pipeline
    media_off = media_problems(pipeline, media_processor(pipeline, config.data_dir))
    for problem in media_off:
        print(f"warn  media: {problem}")
    if not media_off:
        print("ok    media: images (Pillow) and video/audio (ffprobe, ffmpeg) are probed")
    if config.auth == "none":
        print("warn  auth: off (auth = 'none')")
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
