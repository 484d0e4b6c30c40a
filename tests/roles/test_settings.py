"""The settings of roles and processes: role, workers, worker_port, the locker they pick."""

from __future__ import annotations

from pathlib import Path

import pytest

from tusserver.app import _locker
from tusserver.catalog.db import create_database
from tusserver.config import ConfigError, TusServerConfig, load_config
from tusserver.metrics import Metrics
from tusserver.supervisor import Supervisor
from tusserver.uploads.filelocks import FileLocker
from tusserver.uploads.locks import InProcessLocker


def test_workers_from_toml_env_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("workers = 4\nrole = 'api'\n")
    assert load_config(toml_path=toml, environ={}).workers == "4"
    assert load_config(toml_path=toml, environ={}).worker_count == 4
    assert load_config(toml_path=toml, environ={}).role == "api"
    cfg = load_config(environ={"TUSSERVER_WORKERS": "auto"})
    assert cfg.worker_count >= 1
    assert load_config(environ={}, overrides={"workers": "3"}).worker_count == 3
    assert TusServerConfig().workers == "1" and TusServerConfig().role == "all"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("workers", "0"),
        ("workers", "-2"),
        ("workers", "many"),
        ("role", "db"),
        ("worker_port", "0"),
    ],
)
def test_bad_values_name_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(environ={f"TUSSERVER_{key.upper()}": value})


def test_auto_locker_is_a_file_locker_with_several_processes(tmp_path: Path) -> None:
    db = create_database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    one = TusServerConfig(data_dir=tmp_path)
    assert isinstance(_locker(one, db, Metrics()), InProcessLocker)
    assert isinstance(_locker(one.replace(workers="2"), db, Metrics()), FileLocker)
    assert isinstance(_locker(one.replace(locker="file"), db, Metrics()), FileLocker)
    # an api instance and a worker on one data directory are several processes too
    assert isinstance(_locker(one.replace(role="api"), db, Metrics()), FileLocker)
    assert isinstance(_locker(one.replace(role="worker"), db, Metrics()), FileLocker)


def test_only_the_first_process_sweeps_and_sqlite_children_do_not_cache(tmp_path: Path) -> None:
    config = TusServerConfig(data_dir=tmp_path, workers="3", sweep_interval=60, cache_ttl=30)
    sup = Supervisor(config, processes=3, port=1080, app_factory=lambda c: None)  # type: ignore[arg-type,return-value]
    first, second = sup.child_config(0), sup.child_config(1)
    assert first.sweep_interval == 60 and second.sweep_interval == 0
    assert first.cache_ttl == 0 and second.cache_ttl == 0
    pg = config.replace(database_url="postgresql+asyncpg://u@h/db")
    sup = Supervisor(pg, processes=3, port=1080, app_factory=lambda c: None)  # type: ignore[arg-type,return-value]
    assert sup.child_config(2).cache_ttl == 30
