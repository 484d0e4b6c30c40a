"""Start-up checks of the settings that point outside the process: the database and S3.

``tusserver serve``, ``migrate`` and ``check`` run them before anything else. Each problem is
one line that names the setting and says what to do (never a traceback), e.g.::

    database_url: PostgreSQL at 127.0.0.1:5432 refused user 'tus' (wrong password?): fix the
    user and password in database_url

The checks make their own short-lived connections (no pool, no retries, a timeout) and leave
no thread or connection behind, so a server can fork after them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TusServerConfig
from .settings import ServerSettings, StorageSettings

__all__ = ["Problem", "check_database", "check_object_store", "preflight"]

#: Seconds each check waits for an answer.
TIMEOUT = 10.0

#: SQLAlchemy driver -> (module to import, how to install it).
_DRIVERS = {
    "asyncpg": ("asyncpg", "pip install 'tusserver[postgres]' (or pip install asyncpg)"),
    "psycopg": ("psycopg", "pip install 'psycopg[binary]'"),
    "psycopg_async": ("psycopg", "pip install 'psycopg[binary]'"),
    "aiosqlite": ("aiosqlite", "pip install aiosqlite"),
}

#: S3 error codes that mean the credentials are not accepted.
_S3_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """An unusable setting: the setting's name and the rest of the line (what and the fix)."""

    setting: str
    message: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


async def preflight(
    config: TusServerConfig, *, database: bool = True, objects: bool = True
) -> list[Problem]:
    """Every problem found (empty: the settings work)."""
    problems: list[Problem] = []
    if database and (p := await check_database(config.sections.server)) is not None:
        problems.append(p)
    if objects and (p := await check_object_store(config.sections.storage)) is not None:
        problems.append(p)
    return problems


# --- database ---------------------------------------------------------------------------------


async def check_database(config: ServerSettings, wait: float = TIMEOUT) -> Problem | None:
    """Whether the catalog's driver is installed and the database answers ``SELECT 1``."""
    from sqlalchemy.engine import make_url

    url = make_url(config.effective_database_url)
    setting = "database_url" if config.database_url else "data_dir"
    driver = url.get_driver_name()
    module, install = _DRIVERS.get(driver, (driver, f"install the {driver} package"))
    if importlib.util.find_spec(module) is None:
        return Problem("database_url", f"the database driver {module} is not installed: {install}")
    if url.get_backend_name() == "sqlite":
        return await asyncio.to_thread(_check_sqlite, url.database, setting)
    return await _check_server_database(url, wait)


def _check_sqlite(database: str | None, setting: str) -> Problem | None:
    if not database or database == ":memory:":
        return None
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5)
        try:
            conn.execute("SELECT 1").fetchone()
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        return Problem(
            setting,
            f"cannot open the SQLite database {path} ({_first_line(exc)}): "
            f"make its directory writable or set {setting} elsewhere",
        )
    return None


async def _check_server_database(url: Any, wait: float) -> Problem | None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from .catalog.db import terminate_invalidated

    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    engine = create_async_engine(url, poolclass=NullPool)
    if url.get_driver_name() == "asyncpg":
        # A statement cancelled by the bound below (a server that stopped answering) ends
        # its connection at once, not after a graceful close that waits for the server.
        terminate_invalidated(engine)
    try:
        async with asyncio.timeout(wait):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except TimeoutError:
        return Problem(
            "database_url",
            f"PostgreSQL at {where} did not answer within {wait:g} s: "
            "check the host and port in database_url and that the server runs",
        )
    except Exception as exc:
        return _database_problem(exc, where, url.username or "", url.database or "")
    finally:
        await engine.dispose()
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what SQLAlchemy wrapped and what caused it."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return seen


def _database_problem(exc: Exception, where: str, user: str, dbname: str) -> Problem:
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"InvalidPasswordError", "InvalidAuthorizationSpecificationError"}:
        return Problem(
            "database_url",
            f"PostgreSQL at {where} refused user {user!r} ({_first_line(exc)}): "
            "fix the user and password in database_url",
        )
    if "InvalidCatalogNameError" in names:
        return Problem(
            "database_url",
            f"database {dbname!r} does not exist on {where}: create it "
            f"(createdb {dbname}) or fix the name in database_url",
        )
    if names & {"ConnectionRefusedError", "ConnectionError", "gaierror", "OSError"} or any(
        isinstance(e, OSError) for e in _chain(exc)
    ):
        return Problem(
            "database_url",
            f"cannot reach PostgreSQL at {where} ({_first_line(exc)}): "
            "start it, or fix the host and port in database_url",
        )
    return Problem(
        "database_url",
        f"PostgreSQL at {where} failed: {type(exc).__name__}: {_first_line(exc)}",
    )


# --- object store -----------------------------------------------------------------------------


async def check_object_store(config: StorageSettings, wait: float = TIMEOUT) -> Problem | None:
    """With S3: the credentials are accepted and the bucket exists (or is created)."""
    if not config.uses_s3:
        return None
    if importlib.util.find_spec("minio") is None:
        return Problem(
            "object_store",
            "S3 needs the minio package, which is not installed: pip install 'tusserver[s3]'",
        )
    return await asyncio.to_thread(_check_s3, config, wait)


def _check_s3(config: StorageSettings, timeout: float) -> Problem | None:
    import urllib3
    from minio import Minio
    from minio.error import S3Error

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0),
    )
    scheme = "https" if config.s3_secure else "http"
    where = f"{scheme}://{config.s3_endpoint}"
    bucket = config.s3_bucket
    step = "connect"
    try:
        client = Minio(
            config.s3_endpoint,
            access_key=config.s3_access_key,
            secret_key=config.s3_secret_key,
            secure=config.s3_secure,
            region=config.s3_region or None,
            http_client=http,
        )
        step = "exists"
        if not client.bucket_exists(bucket):
            step = "create"
            try:
                client.make_bucket(bucket, config.s3_region or None)
            except S3Error:
                if not client.bucket_exists(bucket):  # made by another instance meanwhile?
                    raise
    except S3Error as exc:
        if step == "create":
            return Problem(
                "s3_bucket",
                f"the bucket {bucket!r} does not exist at {where} and could not be created "
                f"({exc.code}): create it, or set s3_bucket to an existing bucket",
            )
        if exc.code in _S3_AUTH_CODES:
            return Problem(
                "s3_access_key",
                f"S3 at {where} refused the credentials ({exc.code}): "
                "fix s3_access_key and s3_secret_key",
            )
        return Problem("s3_bucket", f"S3 at {where} answered {exc.code} for bucket {bucket!r}")
    except ValueError as exc:  # the SDK refuses a malformed endpoint or bucket name
        text = _first_line(exc)
        setting = "s3_bucket" if "bucket" in text.lower() else "s3_endpoint"
        return Problem(setting, f"{text}: fix {setting}")
    except Exception as exc:  # urllib3's connection errors, TLS errors, ...
        return Problem(
            "s3_endpoint",
            f"cannot reach S3 at {where} ({type(exc).__name__}): start it, or fix "
            "s3_endpoint (host:port) and s3_secure",
        )
    finally:
        http.clear()
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
