"""The configuration in sections (tusserver/settings/) and its start-up step (tusserver.startup).

Each section checks its own fields when built on its own; ``TusServerConfig`` is the flat facade
composed of them; reading key files and checking the files served happens in ``resolve``, never
when a config is built.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tusserver.app import build_runtime
from tusserver.config import ConfigError, TusServerConfig
from tusserver.settings import (
    AuthSettings,
    CacheSettings,
    EncryptionSettings,
    HttpSettings,
    LogSettings,
    PipelineSettings,
    Sections,
    ServerSettings,
    StorageSettings,
    UploadSettings,
    WebhookSettings,
    WebSettings,
)
from tusserver.startup import resolve

ROOT = Path(__file__).resolve().parents[2]
KEY = "k1:" + base64.b64encode(b"k" * 32).decode()


SECTION_CLASSES = [
    ServerSettings,
    UploadSettings,
    StorageSettings,
    EncryptionSettings,
    PipelineSettings,
    WebhookSettings,
    HttpSettings,
    AuthSettings,
    WebSettings,
    CacheSettings,
    LogSettings,
]


def test_every_setting_is_in_exactly_one_section_in_the_reference_order() -> None:
    flat = [f.name for f in dataclasses.fields(TusServerConfig)]
    by_section = [f.name for cls in SECTION_CLASSES for f in dataclasses.fields(cls)]
    assert flat == by_section
    assert len(set(flat)) == len(flat)
    assert [f.name for f in dataclasses.fields(Sections)] == [
        "server",
        "uploads",
        "storage",
        "encryption",
        "pipeline",
        "webhooks",
        "http",
        "auth",
        "web",
        "cache",
        "logs",
    ]


def test_sections_hold_the_flat_values(tmp_path: Path) -> None:
    config = TusServerConfig(
        data_dir=tmp_path, max_size=123, s3_bucket="b", pipeline_workers=3, log_level="debug"
    )
    sections = config.sections
    assert type(sections.uploads) is UploadSettings and sections.uploads.max_size == 123
    assert type(sections.storage) is StorageSettings and sections.storage.s3_bucket == "b"
    assert sections.pipeline.pipeline_workers == 3
    assert sections.logs.log_level == "debug"
    assert sections.server.data_dir == tmp_path
    for field in dataclasses.fields(Sections):
        section = getattr(sections, field.name)
        for f in dataclasses.fields(section):
            assert getattr(section, f.name) == getattr(config, f.name), f.name
    # A changed copy has changed sections; the original keeps its own.
    changed = config.replace(max_size=7)
    assert changed.sections.uploads.max_size == 7
    assert config.sections.uploads.max_size == 123


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (ServerSettings, {"port": 0}, "port: 0 is not a TCP port"),
        (ServerSettings, {"base_path": "/x"}, "base_path: must start and end with '/'"),
        (ServerSettings, {"database_url": "mysql://u@db/x"}, "database_url: unsupported scheme"),
        (UploadSettings, {"write_buffer_size": 100}, "write_buffer_size: must be at least 4096"),
        (UploadSettings, {"locker": "redis"}, "locker: must be auto, memory, postgres or file"),
        (StorageSettings, {"chunk_store": "s3"}, "s3_endpoint: required when a store is 's3'"),
        (StorageSettings, {"object_key_template": "{name}"}, "must contain {file_id}"),
        (EncryptionSettings, {"encryption": "envelope"}, "encryption_keys: "),
        (PipelineSettings, {"pipeline_lease": float("nan")}, "pipeline_lease: must be positive"),
        (PipelineSettings, {"pipeline_lease": float("inf")}, "pipeline_lease: must be positive"),
        # Infinity (valid TOML) and durations past any date: refused, not a crash later.
        (UploadSettings, {"expiration": float("inf")}, "expiration: must be a number from 0"),
        (UploadSettings, {"event_retention": float("inf")}, "event_retention: must be a number"),
        (UploadSettings, {"tombstone_retention": 1e12}, "tombstone_retention: must be a number"),
        (StorageSettings, {"s3_read_timeout": float("inf")}, "s3_read_timeout: must be positive"),
        (PipelineSettings, {"clamd_url": "http://x"}, "clamd_url: must start with"),
        (AuthSettings, {"jwt_algorithm": "RS256"}, "jwt_public_key_file: required for RS256"),
        (
            AuthSettings,
            {"production": True, "jwt_secret": "x" * 40},
            "cookie_secure: must be true in production",
        ),
        (WebSettings, {"tls_cert_file": "c.pem"}, "set both tls_cert_file and tls_key_file"),
        (CacheSettings, {"cache_max_entries": 0}, "cache_max_entries: must be at least 1"),
        (LogSettings, {"log_format": "xml"}, "log_format: must be 'console' or 'json'"),
    ],
)
def test_each_section_checks_its_own_fields(
    section: type, values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        section(**values)
    assert message in str(err.value)
    # The facade refuses the same values with the same message.
    with pytest.raises(ConfigError) as flat:
        TusServerConfig(**values)  # type: ignore[arg-type]
    assert str(flat.value) == str(err.value)


def test_rules_joining_two_sections_are_checked_by_the_facade() -> None:
    # Each section alone accepts its half...
    UploadSettings(locker="postgres")
    EncryptionSettings(encryption="envelope", encryption_keys=(KEY,))
    StorageSettings(chunk_store="s3", s3_endpoint="h:1", s3_access_key="a", s3_secret_key="b")
    # ...the whole config does not.
    with pytest.raises(ConfigError, match="locker: 'postgres' needs a PostgreSQL database_url"):
        TusServerConfig(locker="postgres")
    with pytest.raises(ConfigError, match="encryption: 'envelope' covers the local chunk store"):
        TusServerConfig(
            encryption="envelope",
            encryption_keys=(KEY,),
            chunk_store="s3",
            s3_endpoint="h:1",
            s3_access_key="a",
            s3_secret_key="b",
        )


def test_building_a_config_reads_no_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    config = TusServerConfig(
        data_dir=tmp_path / "data",
        encryption="envelope",
        encryption_key_file=str(tmp_path / "no-keys"),
        tls_cert_file=missing,
        tls_key_file=missing,
        jwt_algorithm="RS256",
        jwt_public_key_file=missing,
    )
    assert config.sections.encryption.enabled
    with pytest.raises(ConfigError, match="encryption_key_file: cannot read the key file"):
        resolve(config)
    with pytest.raises(ConfigError, match="encryption_key_file"):
        build_runtime(config)  # create_app's wiring runs the start-up step itself
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", ["tls_cert_file", "jwt_public_key_file"])
def test_start_up_step_names_an_unreadable_file(tmp_path: Path, name: str) -> None:
    missing = str(tmp_path / "missing.pem")
    settings: dict[str, object] = {name: missing}
    if name == "tls_cert_file":
        settings["tls_key_file"] = missing
    else:
        settings["jwt_algorithm"] = "RS256"
    config = TusServerConfig(data_dir=tmp_path, **settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        resolve(config)
    assert str(err.value) == f"{name}: {missing} is not a readable file"


def test_start_up_step_reads_the_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# main key\n{KEY}\n")
    public = tmp_path / "public.pem"
    public.write_text("-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n")
    config = TusServerConfig(
        data_dir=tmp_path,
        encryption="envelope",
        encryption_key_file=str(keys),
        jwt_algorithm="ES256",
        jwt_public_key_file=str(public),
    )
    resolved = resolve(config)
    assert resolved.key_ring is not None and resolved.key_ring.key_ids == ["k1"]
    assert resolved.jwt_public_key == public.read_text()
    assert resolved.jwt_private_key is None
    plain = resolve(TusServerConfig(data_dir=tmp_path))
    assert plain.key_ring is None and plain.jwt_public_key is None


async def test_components_receive_their_section(tmp_path: Path) -> None:
    config = TusServerConfig(data_dir=tmp_path, max_size=1000, pipeline_workers=2, auth="none")
    rt = build_runtime(config)
    try:
        assert rt.uploads.config is config.sections.uploads
        assert type(rt.uploads.config) is UploadSettings
    finally:
        await rt.db.dispose()


def test_the_config_imports_no_store() -> None:
    code = (
        "import sys, tusserver.config\n"
        "loaded = [m for m in sys.modules if m.startswith(('storage_backends', 'cryptography'))]\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
