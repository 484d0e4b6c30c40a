"""Unit tests of ``tusserver.config.load_config``: defaults < TOML < environment < overrides.

Every call passes ``environ`` explicitly so the real environment (which holds the test suite's
own TUSSERVER_TEST_* variables) never leaks in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

import pytest

from tusserver.config import ConfigError, TusServerConfig, load_config

FIELDS = [f.name for f in dataclasses.fields(TusServerConfig)]
TYPES = typing.get_type_hints(TusServerConfig)
NUMERIC = [name for name in FIELDS if TYPES[name] in (int, float)]
FLOATS = [name for name in FIELDS if TYPES[name] is float]
SECRETS = [f.name for f in dataclasses.fields(TusServerConfig) if f.metadata.get("secret")]


def write_toml(tmp_path: Path, text: str, name: str = "tusserver.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


# --------------------------------------------------------------------------------------------
# defaults


def test_defaults() -> None:
    cfg = load_config(environ={})
    assert cfg == TusServerConfig()
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 1080
    assert cfg.data_dir == Path("./data")
    assert cfg.database_url == ""
    assert cfg.auto_migrate is True
    assert cfg.base_path == "/uploads/"
    assert cfg.max_size == 0
    assert cfg.expiration == 24 * 3600.0
    assert cfg.sweep_interval == 300.0
    assert cfg.tombstone_retention == 7 * 24 * 3600.0
    assert cfg.orphan_sweep_interval == 3600.0
    assert cfg.orphan_grace == 3600.0
    assert cfg.fsync is False
    assert cfg.lock_timeout == 10.0
    assert cfg.write_buffer_size == 256 * 1024
    assert cfg.cors_origins == ("*",)
    assert cfg.trust_proxy_headers is False
    assert cfg.relative_location is False
    assert cfg.log_format == "console"
    assert cfg.log_level == "info"


def test_every_field_documented() -> None:
    for f in dataclasses.fields(TusServerConfig):
        assert f.metadata.get("doc"), f.name


def test_config_is_frozen() -> None:
    cfg = load_config(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


def test_derived_paths() -> None:
    cfg = load_config(environ={}, overrides={"data_dir": "/srv/tus"})
    assert cfg.uploads_dir == Path("/srv/tus/uploads")
    assert cfg.effective_database_url == "sqlite+aiosqlite:////srv/tus/tusserver.db"
    url = "postgresql+asyncpg://u:p@h/db"
    assert cfg.replace(database_url=url).effective_database_url == url


def test_replace_validates() -> None:
    cfg = load_config(environ={})
    assert cfg.replace(port=8080).port == 8080
    assert cfg.port == 1080
    with pytest.raises(ConfigError, match="port"):
        cfg.replace(port=0)


# --------------------------------------------------------------------------------------------
# TOML


def test_toml_values(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        """
host = "0.0.0.0"
port = 8080
data_dir = "/var/lib/tus"
database_url = "postgresql+asyncpg://u:p@db/tus"
auto_migrate = false
base_path = "/files/"
max_size = 1073741824
expiration = 60          # an int for a float
sweep_interval = 1.5
fsync = true
write_buffer_size = 65536
cors_origins = ["https://a.example", "https://b.example"]
log_format = "json"
log_level = "debug"
""",
    )
    cfg = load_config(toml_path=path, environ={})
    assert cfg.host == "0.0.0.0"
    assert cfg.port == 8080
    assert cfg.data_dir == Path("/var/lib/tus")
    assert isinstance(cfg.data_dir, Path)
    assert cfg.database_url == "postgresql+asyncpg://u:p@db/tus"
    assert cfg.auto_migrate is False
    assert cfg.base_path == "/files/"
    assert cfg.max_size == 2**30
    assert cfg.expiration == 60.0
    assert type(cfg.expiration) is float
    assert cfg.sweep_interval == 1.5
    assert cfg.fsync is True
    assert cfg.write_buffer_size == 65536
    assert cfg.cors_origins == ("https://a.example", "https://b.example")
    assert cfg.log_format == "json"
    assert cfg.log_level == "debug"
    # untouched keys keep their defaults
    assert cfg.lock_timeout == 10.0


def test_toml_path_as_str(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 8081\n")
    assert load_config(toml_path=str(path), environ={}).port == 8081


def test_empty_toml_gives_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "")
    assert load_config(toml_path=path, environ={}) == TusServerConfig()


def test_toml_named_by_environment(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 8082\n")
    cfg = load_config(environ={"TUSSERVER_CONFIG": str(path)})
    assert cfg.port == 8082


def test_explicit_toml_path_wins_over_environment(tmp_path: Path) -> None:
    a = write_toml(tmp_path, "port = 1111\n", "a.toml")
    b = write_toml(tmp_path, "port = 2222\n", "b.toml")
    assert load_config(toml_path=a, environ={"TUSSERVER_CONFIG": str(b)}).port == 1111


def test_empty_config_variable_means_no_file() -> None:
    assert load_config(environ={"TUSSERVER_CONFIG": ""}) == TusServerConfig()


def test_toml_table_flattened(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[log]\nformat = "json"\nlevel = "error"\n')
    cfg = load_config(toml_path=path, environ={})
    assert cfg.log_format == "json"
    assert cfg.log_level == "error"


def test_toml_s3_table_flattened(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[s3]\nbucket = "media"\nsecure = false\n')
    cfg = load_config(toml_path=path, environ={})
    assert cfg.s3_bucket == "media"
    assert cfg.s3_secure is False


def test_toml_table_and_flat_key_same_result(tmp_path: Path) -> None:
    a = write_toml(tmp_path, '[s3]\nregion = "eu"\n', "a.toml")
    b = write_toml(tmp_path, 's3_region = "eu"\n', "b.toml")
    assert load_config(toml_path=a, environ={}) == load_config(toml_path=b, environ={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[s3]\ncolour = "red"\n', "s3_colour"),
        ('[storage]\nbucket = "x"\n', "storage_bucket"),
        ("[clamav]\nenabled = true\n", "clamav_enabled"),
        ("[log.sub]\nx = 1\n", "log_sub"),
        ("colour = 1\n", "colour"),
        ("PORT = 1\n", "PORT"),
        ("config = 'x.toml'\n", "config"),
        ("test_anything = 1\n", "test_anything"),
    ],
)
def test_toml_unknown_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_toml(tmp_path, text)
    message = config_error(toml_path=path, environ={})
    assert message.startswith(f"{key}:")
    assert "unknown" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('port = "abc"\n', "port"),
        ('port = "8080"\n', "port"),  # TOML is typed: no string coercion
        ("port = true\n", "port"),
        ("port = 80.0\n", "port"),
        ("max_size = 1.5\n", "max_size"),
        ("expiration = true\n", "expiration"),
        ('expiration = "60"\n', "expiration"),
        ('fsync = "true"\n', "fsync"),
        ("fsync = 1\n", "fsync"),
        ("host = 1\n", "host"),
        ('host = ["a"]\n', "host"),
        ("data_dir = 1\n", "data_dir"),
        ("cors_origins = [1, 2]\n", "cors_origins"),
        ('cors_origins = ["a", 1]\n', "cors_origins"),
        ("cors_origins = 1\n", "cors_origins"),
        ("log_level = 1\n", "log_level"),
        ("port = 1979-05-27\n", "port"),
    ],
)
def test_toml_wrong_type(tmp_path: Path, text: str, key: str) -> None:
    path = write_toml(tmp_path, text)
    message = config_error(toml_path=path, environ={})
    assert message.startswith(f"{key}:")
    assert "not a valid" in message


def test_toml_string_list_for_tuple(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'cors_origins = "https://a, https://b"\n')
    assert load_config(toml_path=path, environ={}).cors_origins == ("https://a", "https://b")


def test_toml_empty_list(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "cors_origins = []\n")
    assert load_config(toml_path=path, environ={}).cors_origins == ()


def test_missing_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = config_error(toml_path=path, environ={})
    assert str(path) in message
    assert "No such file" in message


def test_missing_toml_file_named_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    message = config_error(environ={"TUSSERVER_CONFIG": str(path)})
    assert str(path) in message


def test_toml_path_is_a_directory(tmp_path: Path) -> None:
    message = config_error(toml_path=tmp_path, environ={})
    assert str(tmp_path) in message


@pytest.mark.parametrize("text", ["port = \n", "port = 1\nport = 2\n", "[s3\n", "x = 'a\n"])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    path = write_toml(tmp_path, text)
    message = config_error(toml_path=path, environ={})
    assert str(path) in message


# --------------------------------------------------------------------------------------------
# environment


def test_environment_overrides_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'port = 8080\nhost = "0.0.0.0"\n')
    cfg = load_config(toml_path=path, environ={"TUSSERVER_PORT": "9090"})
    assert cfg.port == 9090
    assert cfg.host == "0.0.0.0"


def test_overrides_win_over_environment_and_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "port = 8080\nfsync = false\n")
    cfg = load_config(
        toml_path=path,
        environ={"TUSSERVER_PORT": "9090", "TUSSERVER_FSYNC": "1"},
        overrides={"port": 7000},
    )
    assert cfg.port == 7000
    assert cfg.fsync is True


def test_override_none_is_skipped() -> None:
    cfg = load_config(environ={"TUSSERVER_PORT": "9090"}, overrides={"port": None, "host": None})
    assert cfg.port == 9090
    assert cfg.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"port": "7001"}, "port", 7001),  # CLI strings are coerced like environment values
        ({"fsync": "yes"}, "fsync", True),
        ({"expiration": "1.5"}, "expiration", 1.5),
        ({"cors_origins": "a,b"}, "cors_origins", ("a", "b")),
        ({"cors_origins": ["a", "b"]}, "cors_origins", ("a", "b")),
        ({"data_dir": Path("/x")}, "data_dir", Path("/x")),
        ({"data_dir": "/x"}, "data_dir", Path("/x")),
        ({"expiration": 5}, "expiration", 5.0),
        ({"fsync": True}, "fsync", True),
    ],
)
def test_override_coercion(overrides: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(load_config(environ={}, overrides=overrides), field) == expected


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"colour": "red"}, "colour"),
        ({"s3_colour": "x"}, "s3_colour"),
        ({"port": True}, "port"),
        ({"port": 1.5}, "port"),
        ({"port": "abc"}, "port"),
        ({"fsync": 1}, "fsync"),
        ({"host": 1}, "host"),
    ],
)
def test_override_errors(overrides: dict[str, Any], key: str) -> None:
    assert config_error(environ={}, overrides=overrides).startswith(f"{key}:")


@pytest.mark.parametrize(
    "raw", ["1", "true", "TRUE", "True", "yes", "YES", "on", "On", " 1 ", "\ttrue\n"]
)
def test_env_bool_true(raw: str) -> None:
    assert load_config(environ={"TUSSERVER_FSYNC": raw}).fsync is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "No", "off", "OFF", " 0 "])
def test_env_bool_false(raw: str) -> None:
    cfg = load_config(environ={"TUSSERVER_AUTO_MIGRATE": raw})
    assert cfg.auto_migrate is False


@pytest.mark.parametrize("raw", ["", " ", "2", "-1", "maybe", "y", "n", "t", "f", "enabled", "1.0"])
def test_env_bool_invalid(raw: str) -> None:
    message = config_error(environ={"TUSSERVER_FSYNC": raw})
    assert message.startswith("TUSSERVER_FSYNC:")
    assert "bool" in message


@pytest.mark.parametrize(
    ("raw", "expected"), [("8080", 8080), (" 8080 ", 8080), ("1", 1), ("65535", 65535)]
)
def test_env_int(raw: str, expected: int) -> None:
    assert load_config(environ={"TUSSERVER_PORT": raw}).port == expected


@pytest.mark.parametrize("raw", ["", " ", "abc", "80.0", "1e3", "0x50", "eighty", "80 80", "true"])
def test_env_int_invalid(raw: str) -> None:
    message = config_error(environ={"TUSSERVER_PORT": raw})
    assert message.startswith("TUSSERVER_PORT:")
    assert "int" in message


@pytest.mark.parametrize(
    ("raw", "expected"), [("60", 60.0), ("1.5", 1.5), (" 2 ", 2.0), ("0", 0.0), ("1e3", 1000.0)]
)
def test_env_float(raw: str, expected: float) -> None:
    cfg = load_config(environ={"TUSSERVER_EXPIRATION": raw})
    assert cfg.expiration == expected
    assert type(cfg.expiration) is float


@pytest.mark.parametrize("raw", ["", "abc", "1,5", "true", "60s"])
def test_env_float_invalid(raw: str) -> None:
    message = config_error(environ={"TUSSERVER_EXPIRATION": raw})
    assert message.startswith("TUSSERVER_EXPIRATION:")
    assert "float" in message


def test_env_float_nan_rejected() -> None:
    # NaN compares false with everything, so "must not be negative" lets it through
    assert config_error(environ={"TUSSERVER_LOCK_TIMEOUT": "nan"}).startswith("lock_timeout:")


@pytest.mark.parametrize("field", NUMERIC)
def test_negative_numbers_rejected(field: str) -> None:
    # sizes, counts and durations: none of them has a meaning below zero
    message = config_error(environ={}, overrides={field: -1})
    assert message.startswith(f"{field}:")


@pytest.mark.parametrize("field", FLOATS)
def test_nan_rejected_for_every_float(field: str) -> None:
    message = config_error(environ={}, overrides={field: math.nan})
    assert message.startswith(f"{field}:")


def test_toml_float_nan_rejected(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "lock_timeout = nan\n")
    assert "lock_timeout" in config_error(toml_path=path, environ={})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("*", ("*",)),
        ("https://a.example", ("https://a.example",)),
        ("a,b", ("a", "b")),
        (" a , b ", ("a", "b")),
        ("a,,b,", ("a", "b")),
        ("", ()),
        (" , ", ()),
    ],
)
def test_env_tuple(raw: str, expected: tuple[str, ...]) -> None:
    assert load_config(environ={"TUSSERVER_CORS_ORIGINS": raw}).cors_origins == expected


def test_env_strings_and_paths() -> None:
    cfg = load_config(
        environ={
            "TUSSERVER_HOST": "::",
            "TUSSERVER_DATA_DIR": "/tmp/x",
            "TUSSERVER_DATABASE_URL": "postgresql+asyncpg://h/db",
            "TUSSERVER_BASE_PATH": "/api/files/",
            "TUSSERVER_LOG_FORMAT": "json",
        }
    )
    assert cfg.host == "::"
    assert cfg.data_dir == Path("/tmp/x")
    assert cfg.database_url == "postgresql+asyncpg://h/db"
    assert cfg.base_path == "/api/files/"
    assert cfg.log_format == "json"


def env_form(value: Any) -> str:
    """How a default value is written in a TUSSERVER_* variable."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


@pytest.mark.parametrize("name", FIELDS)
def test_env_every_field_settable(name: str) -> None:
    default = getattr(TusServerConfig(), name)
    cfg = load_config(environ={f"TUSSERVER_{name.upper()}": env_form(default)})
    assert getattr(cfg, name) == default
    assert type(getattr(cfg, name)) is type(default)
    assert cfg == TusServerConfig()


@pytest.mark.parametrize(
    "name",
    ["TUSSERVER_COLOUR", "TUSSERVER_S3_COLOUR", "TUSSERVER_", "TUSSERVER_TEST", "TUSSERVER_PORTS"],
)
def test_env_unknown_variable(name: str) -> None:
    message = config_error(environ={name: "1"})
    assert message.startswith(f"{name}:")
    assert "unknown" in message


def test_env_test_variables_ignored() -> None:
    environ = {
        "TUSSERVER_TEST_NO_SERVICES": "1",
        "TUSSERVER_TEST_PG_HOST": "127.0.0.1",
        "TUSSERVER_TEST_ANYTHING_AT_ALL": "x",
        "TUSSERVER_TEST_": "",
    }
    assert load_config(environ=environ) == TusServerConfig()


def test_env_other_variables_ignored() -> None:
    environ = {
        "PATH": "/bin",
        "HOME": "/root",
        "PORT": "1",
        "XTUSSERVER_PORT": "2",
        "TUS_PORT": "3",
    }
    assert load_config(environ=environ) == TusServerConfig()


# --------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("port", "0"),
        ("port", "-1"),
        ("port", "65536"),
        ("port", "100000"),
        ("base_path", "uploads"),
        ("base_path", "/uploads"),
        ("base_path", "uploads/"),
        ("base_path", ""),
        ("max_size", "-1"),
        ("write_buffer_size", "-1"),
        ("write_buffer_size", "4095"),
        ("write_buffer_size", "0"),
        ("expiration", "-1"),
        ("sweep_interval", "-0.5"),
        ("lock_timeout", "-1"),
        ("tombstone_retention", "-1"),
        ("orphan_sweep_interval", "-1"),
        ("orphan_grace", "59.9"),
        ("orphan_grace", "0"),
        ("log_format", "xml"),
        ("log_format", "JSON"),
        ("log_format", ""),
        ("log_level", "INFO"),
        ("log_level", "trace"),
        ("log_level", "critical"),
        ("object_store", "gcs"),
        ("s3_part_size", "1024"),
        ("object_key_template", "{name}"),
        ("allowed_categories", "video,exe"),
        ("clamd_url", "http://clamd:3310"),
        ("pipeline_workers", "0"),
    ],
)
@pytest.mark.parametrize("source", ["env", "toml", "override"])
def test_invalid_values(tmp_path: Path, field: str, raw: str, source: str) -> None:
    kwargs: dict[str, Any] = {"environ": {}}
    if source == "env":
        kwargs["environ"] = {f"TUSSERVER_{field.upper()}": raw}
    elif source == "override":
        kwargs["overrides"] = {field: raw}
    else:
        literal = raw if TYPES[field] in (int, float) else json.dumps(raw)
        kwargs["toml_path"] = write_toml(tmp_path, f"{field} = {literal}\n")
    message = config_error(**kwargs)
    assert message.startswith(f"{field}:")


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("port", "1"),
        ("port", "65535"),
        ("base_path", "/"),
        ("base_path", "/a/b/"),
        ("max_size", "0"),
        ("write_buffer_size", "4096"),
        ("expiration", "0"),
        ("sweep_interval", "0"),
        ("lock_timeout", "0"),
        ("tombstone_retention", "0"),
        ("orphan_sweep_interval", "0"),
        ("orphan_grace", "60"),
        ("log_format", "json"),
        ("log_format", "console"),
        ("log_level", "debug"),
        ("log_level", "warning"),
        ("log_level", "error"),
    ],
)
def test_boundary_values_accepted(field: str, raw: str) -> None:
    cfg = load_config(environ={f"TUSSERVER_{field.upper()}": raw})
    typ = type(getattr(TusServerConfig(), field))
    assert getattr(cfg, field) == typ(raw)


# --------------------------------------------------------------------------------------------
# masked


def test_masked_hides_database_url() -> None:
    url = "postgresql+asyncpg://user:s3cr3t-pw@db.internal/tus"
    masked = load_config(environ={"TUSSERVER_DATABASE_URL": url}).masked()
    assert masked["database_url"] == "***"
    assert "s3cr3t" not in json.dumps(masked)
    assert "db.internal" not in repr(masked)


@pytest.mark.parametrize("name", SECRETS)
def test_masked_hides_every_secret(name: str) -> None:
    # (database_url must be a URL: the secret is its password)
    value = "postgres://u:hunter2-secret@h/db" if name == "database_url" else "hunter2-secret"
    masked = load_config(environ={f"TUSSERVER_{name.upper()}": value}).masked()
    assert masked[name] == "***"
    assert "hunter2" not in json.dumps(masked)


def test_masked_plain_values() -> None:
    masked = load_config(environ={}).masked()
    assert list(masked) == FIELDS
    for name in SECRETS:
        assert masked[name] in ("", [])  # nothing to hide
    assert masked["data_dir"] == "data"
    assert masked["cors_origins"] == ["*"]
    assert masked["port"] == 1080
    assert masked["fsync"] is False
    json.dumps(masked)  # plain values only


def test_secret_fields() -> None:
    assert "database_url" in SECRETS
    for name in SECRETS:
        assert TYPES[name] in (str, tuple[str, ...])  # a key list (encryption_keys) too
    for name in ("host", "port", "base_path", "data_dir"):
        assert name not in SECRETS


def test_a_config_built_in_code_takes_a_str_path_and_refuses_wrong_types(tmp_path: Path) -> None:
    """docs/embedding.md: an invalid value raises ConfigError, naming the key, when the
    config is built (a str port was a TypeError deep inside the server; workers=2 an
    AttributeError). A str path and an int for workers are taken, as from TOML."""
    config = TusServerConfig(data_dir=str(tmp_path), workers=2)  # type: ignore[arg-type]
    assert config.data_dir == tmp_path and config.workers == "2"
    assert config.worker_count == 2
    wrong = [
        ({"port": "8080"}, "port"),
        ({"max_size": 1.5}, "max_size"),
        ({"fsync": "yes"}, "fsync"),
    ]
    for changes, key in wrong:
        with pytest.raises(ConfigError) as err:
            TusServerConfig(**changes)  # type: ignore[arg-type]
        assert str(err.value).startswith(f"{key}: "), err.value
