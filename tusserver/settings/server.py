"""Where the server listens, what it runs, and where its catalog and data live."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ._base import MAX_NUMBER, ConfigError, check_port, doc

__all__ = ["DEFAULT_DATABASE_TIMEOUT", "ServerSettings", "normalize_database_url"]

#: The default of ``database_timeout`` (seconds), also for catalogs made without settings.
DEFAULT_DATABASE_TIMEOUT = 10.0


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """The listening sockets, the process role and count, the data directory and the catalog."""

    host: str = field(default="127.0.0.1", metadata=doc("Address to listen on."))
    port: int = field(default=1080, metadata=doc("TCP port to listen on."))
    role: str = field(
        default="all",
        metadata=doc(
            "What `tusserver serve` runs: `all` (HTTP and the pipeline, the embedded default), "
            "`api` (HTTP only: finished files wait for a `tusserver worker`) or `worker` (the "
            "pipeline only, with health and metrics on `worker_port`; what `tusserver worker` "
            "runs)."
        ),
    )
    workers: str = field(
        default="1",
        metadata=doc(
            "Server processes sharing `port` (`serve --workers`), supervised by one parent "
            "that restarts a process that dies; `auto`: one per CPU. With more than one, "
            "upload locks work across the processes (lock files under `<data_dir>/locks`)."
        ),
    )
    worker_port: int = field(
        default=1081,
        metadata=doc("TCP port of `tusserver worker`: only `/healthz`, `/readyz` and `/metrics`."),
    )
    data_dir: Path = field(
        default=Path("./data"),
        metadata=doc("Directory for the embedded default: the SQLite database and local storage."),
    )
    database_url: str = field(
        default="",
        metadata=doc(
            "URL of the catalog: `postgresql://user:pass@host/db` (also `postgres://`; both use "
            "asyncpg), `sqlite:///path/to/file.db`, or an explicit SQLAlchemy async URL such as "
            "`postgresql+asyncpg://...`. Empty: SQLite at `<data_dir>/tusserver.db`.",
            secret=True,
        ),
    )
    database_timeout: float = field(
        default=DEFAULT_DATABASE_TIMEOUT,
        metadata=doc(
            "PostgreSQL: seconds one unit of catalog work (its wait for a connection included), "
            "one call of the upload locker or of the cache bus may take. When PostgreSQL stops "
            "answering (a network partition, a frozen host) requests get 503 with Retry-After "
            "after this long instead of waiting as long as it is gone; the silent connection is "
            "terminated, and new ones are made once it answers again. Must exceed the slowest "
            "legitimate unit (a search page, an analytics report, a retention batch: well under "
            "a second on a million files). Migrations are not bounded by it. SQLite (no network) "
            "ignores it."
        ),
    )
    auto_migrate: bool = field(
        default=True,
        metadata=doc("Apply database migrations at start (`tusserver migrate` does it by hand)."),
    )
    base_path: str = field(
        default="/uploads/",
        metadata=doc("Path of the tus creation URL; each upload lives at `<base_path><id>`."),
    )

    def __post_init__(self) -> None:
        check_port("port", self.port)
        check_port("worker_port", self.worker_port)
        if self.role not in ("all", "api", "worker"):
            raise ConfigError("role: must be 'all', 'api' or 'worker'")
        if self.workers != "auto" and not (self.workers.isdigit() and int(self.workers) >= 1):
            raise ConfigError(f"workers: {self.workers!r} is not 'auto' or a number of at least 1")
        if not self.base_path.startswith("/") or not self.base_path.endswith("/"):
            raise ConfigError("base_path: must start and end with '/'")
        if self.database_url:
            normalize_database_url(self.database_url)  # an unusable URL names the setting
        if not 0 < self.database_timeout <= MAX_NUMBER:  # NaN and infinity too
            raise ConfigError(f"database_timeout: must be positive, at most {MAX_NUMBER}")

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tusserver.db').resolve()}"

    @property
    def worker_count(self) -> int:
        """The number of server processes ``workers`` asks for (``auto``: the usable CPUs)."""
        if self.workers != "auto":
            return int(self.workers)
        if hasattr(os, "sched_getaffinity"):
            return max(1, len(os.sched_getaffinity(0)))
        return os.cpu_count() or 1

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"


#: URL schemes accepted in ``database_url`` -> the SQLAlchemy async driver URL scheme.
_DATABASE_SCHEMES = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgres+asyncpg": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg_async",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
#: Synchronous drivers SQLAlchemy knows, refused with a pointer to the async one.
_SYNC_DRIVERS = {"psycopg2", "psycopg2cffi", "pg8000", "pysqlite", "pysqlcipher", "pygresql"}

_DATABASE_URL_HELP = (
    "use postgresql://user:password@host:port/db (asyncpg) or sqlite:///path/to/file.db"
)


def normalize_database_url(url: str) -> str:
    """The SQLAlchemy async URL for a ``database_url`` setting (no I/O, no imports).

    ``postgresql://`` and ``postgres://`` (what psql and most platforms' ``DATABASE_URL``
    use) get asyncpg; ``sqlite://`` gets aiosqlite; explicit async driver URLs stay as they
    are. Anything else raises :class:`ConfigError` naming ``database_url`` and the fix.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep or not scheme:
        raise ConfigError(f"database_url: not a URL; {_DATABASE_URL_HELP}")
    key = scheme.lower()
    target = _DATABASE_SCHEMES.get(key)
    if target is None:
        backend, _, driver = key.partition("+")
        if backend in ("postgresql", "postgres", "sqlite") and driver in _SYNC_DRIVERS:
            raise ConfigError(
                f"database_url: the driver {driver!r} is synchronous and tusserver needs an "
                f"async one; {_DATABASE_URL_HELP}"
            )
        raise ConfigError(f"database_url: unsupported scheme {scheme!r}; {_DATABASE_URL_HELP}")
    if target == "postgresql+asyncpg" and "sslmode=" in rest:
        # libpq's sslmode (in most platforms' URLs) is asyncpg's ssl, with the same values.
        base, _, query = rest.partition("?")
        params = [
            f"ssl={p.partition('=')[2]}" if p.startswith("sslmode=") else p
            for p in query.split("&")
        ]
        rest = f"{base}?{'&'.join(params)}"
    return f"{target}://{rest}"
