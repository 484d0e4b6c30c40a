"""``database_url`` as PostgreSQL tools and platforms write it (no I/O: parsing only)."""

from __future__ import annotations

import pytest

from tusserver.config import ConfigError, load_config, normalize_database_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/tus", "postgresql+asyncpg://u:p@db:5432/tus"),
        ("postgres://u:p@db/tus", "postgresql+asyncpg://u:p@db/tus"),
        ("POSTGRES://u@db/tus", "postgresql+asyncpg://u@db/tus"),
        ("postgresql+asyncpg://u@db/tus", "postgresql+asyncpg://u@db/tus"),
        ("postgresql+psycopg://u@db/tus", "postgresql+psycopg://u@db/tus"),
        ("sqlite:////srv/tus.db", "sqlite+aiosqlite:////srv/tus.db"),
        ("sqlite+aiosqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
        # libpq's sslmode becomes asyncpg's ssl; other parameters stay
        (
            "postgres://u@db/tus?sslmode=require&application_name=x",
            "postgresql+asyncpg://u@db/tus?ssl=require&application_name=x",
        ),
    ],
)
def test_accepted_urls(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected
    cfg = load_config(environ={"TUSSERVER_DATABASE_URL": given})
    assert cfg.database_url == given  # shown (masked) as given
    assert cfg.effective_database_url == expected


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("mysql://u@db/tus", "unsupported scheme 'mysql'"),
        ("postgresql+psycopg2://u@db/tus", "'psycopg2' is synchronous"),
        ("sqlite+pysqlite:///x.db", "'pysqlite' is synchronous"),
        ("db.example.com/tus", "not a URL"),
    ],
)
def test_refused_urls_name_the_setting_and_the_fix(given: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(environ={"TUSSERVER_DATABASE_URL": given})
    text = str(err.value)
    assert text.startswith("database_url: ") and words in text
    assert "postgresql://user:password@host:port/db" in text
    assert "\n" not in text


def test_postgres_locker_accepts_plain_urls() -> None:
    cfg = load_config(
        environ={"TUSSERVER_DATABASE_URL": "postgres://u@db/tus", "TUSSERVER_LOCKER": "postgres"}
    )
    assert cfg.locker == "postgres"
    with pytest.raises(ConfigError, match="locker"):
        load_config(environ={"TUSSERVER_LOCKER": "postgres"})
