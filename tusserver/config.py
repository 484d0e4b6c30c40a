"""One typed configuration, from defaults, a TOML file and ``TUSSERVER_*`` variables.

Precedence: defaults < TOML file < environment < explicit overrides (CLI flags). Every key is a
field of one section of :mod:`tusserver.settings` with a ``doc`` in its metadata;
:class:`TusServerConfig` is composed of the sections (flat keywords and attributes, the
embedding API) and ``config.sections`` hands each component its own. ``docs/configuration.md``
is checked against these fields by a test, so the two cannot drift.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .settings import (
    MAX_DOWNLOAD_REDIRECT,
    AuthSettings,
    CacheSettings,
    ConfigError,
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
    normalize_database_url,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "MAX_DOWNLOAD_REDIRECT",
    "ConfigError",
    "TusServerConfig",
    "load_config",
    "normalize_database_url",
    "redact_url",
]

ENV_PREFIX = "TUSSERVER_"

_S = TypeVar("_S", bound="DataclassInstance")


# The sections are listed last to first: a dataclass takes its bases' fields in reverse method
# resolution order, so the fields (and docs/configuration.md) come in the order of `Sections`.
@dataclass(frozen=True, kw_only=True)
class TusServerConfig(
    LogSettings,
    CacheSettings,
    WebSettings,
    AuthSettings,
    HttpSettings,
    WebhookSettings,
    PipelineSettings,
    EncryptionSettings,
    StorageSettings,
    UploadSettings,
    ServerSettings,
):
    """Every setting of the server. Build with :func:`load_config` or directly in code.

    The flat facade of the sections: ``TusServerConfig(data_dir=..., max_size=...)`` and
    ``config.max_size`` as the embedding API documents; each section checks its own fields
    when the config is built, then the rules that join two sections are checked here. The
    wiring hands each component its section (``config.sections.storage``...).
    """

    def __post_init__(self) -> None:
        # Built in code (embedding), a value may be of another type than the setting's: a
        # str path for data_dir is taken (as from TOML), a str port is a ConfigError naming
        # the key here, not a TypeError from deep inside the server later.
        for name, typ in _field_types().items():
            value = getattr(self, name)
            coerced = _coerce(name, value, typ, from_env=False)
            if coerced is not value:
                object.__setattr__(self, name, coerced)
        sections = self.sections  # builds, and so checks, every section
        if sections.uploads.locker == "postgres" and not (
            sections.server.effective_database_url.startswith("postgresql")
        ):
            raise ConfigError("locker: 'postgres' needs a PostgreSQL database_url")
        if sections.encryption.enabled and sections.storage.chunk_store == "s3":
            raise ConfigError(
                "encryption: 'envelope' covers the local chunk store only; with "
                "chunk_store = 's3' use s3_sse"
            )

    @cached_property
    def sections(self) -> Sections:
        """The settings by concern, each one checked (built once per config)."""
        return Sections(
            server=self._section(ServerSettings),
            uploads=self._section(UploadSettings),
            storage=self._section(StorageSettings),
            encryption=self._section(EncryptionSettings),
            pipeline=self._section(PipelineSettings),
            webhooks=self._section(WebhookSettings),
            http=self._section(HttpSettings),
            auth=self._section(AuthSettings),
            web=self._section(WebSettings),
            cache=self._section(CacheSettings),
            logs=self._section(LogSettings),
        )

    def _section(self, cls: type[_S]) -> _S:
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def replace(self, **changes: Any) -> TusServerConfig:
        return dataclasses.replace(self, **changes)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain values, secrets masked (for `config show`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            elif f.name == "webhook_urls":
                value = [redact_url(u) for u in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


_SECRET_PARAM = re.compile(
    r"(?i)^(.*[-_.]?)?(token|key|secret|signature|sig|password|passwd|pass|auth|credential"
    r"|api[-_]?key|access[-_]?token)$"
)


def redact_url(url: str) -> str:
    """``url`` fit for a log line: no user name or password, no value of a query parameter
    whose name says it is a credential (token, key, secret, signature, password...)."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            query = "&".join(
                f"{urllib.parse.quote(k)}=***"
                if _SECRET_PARAM.match(k)
                else f"{urllib.parse.quote(k)}={urllib.parse.quote(v)}"
                for k, v in pairs
            )
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "<unparseable url>"


#: String settings that also take a TOML integer.
_STR_OR_INT = frozenset({"workers"})


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TusServerConfig)


def _coerce(name: str, raw: Any, typ: Any, *, from_env: bool) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw is None or (from_env and raw == ""):
            return None
        return _coerce(name, raw, args[0], from_env=from_env)
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            if from_env and isinstance(raw, str):
                low = raw.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
            raise ValueError
        if typ is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int):
                return raw
            if from_env and isinstance(raw, str):
                return int(raw.strip())
            raise ValueError
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, int | float):
                return float(raw)
            if from_env and isinstance(raw, str):
                return float(raw.strip())
            raise ValueError
        if typ is str:
            if isinstance(raw, str):
                return raw
            if name in _STR_OR_INT and isinstance(raw, int) and not isinstance(raw, bool):
                return str(raw)  # workers = 4 as well as workers = "auto"
            raise ValueError
        if typ is Path:
            if isinstance(raw, str | Path):
                return Path(raw)
            raise ValueError
        if origin is tuple:
            if isinstance(raw, str):
                return tuple(p.strip() for p in raw.split(",") if p.strip())
            if isinstance(raw, list | tuple) and all(isinstance(x, str) for x in raw):
                return tuple(raw)
            raise ValueError
    except ValueError:
        pass
    shown = repr(raw) if len(repr(raw)) < 80 else repr(raw)[:77] + "..."
    raise ConfigError(f"{name}: {shown} is not a valid {_type_name(typ)}")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is tuple:
        return "list of strings"
    return getattr(typ, "__name__", str(typ))


def load_config(
    *,
    toml_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TusServerConfig:
    """Build the config from a TOML file, the environment and explicit overrides.

    Raises :class:`ConfigError` naming the key on an unknown key or a value of the wrong type.
    ``TUSSERVER_CONFIG`` in the environment names the TOML file when ``toml_path`` is None.
    """
    env = os.environ if environ is None else environ
    types_ = _field_types()
    values: dict[str, Any] = {}
    path = toml_path or env.get(ENV_PREFIX + "CONFIG") or None
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, raw in _flatten(data).items():
            if key not in types_:
                raise ConfigError(f"{key}: unknown configuration key (in {path})")
            values[key] = _coerce(key, raw, types_[key], from_env=False)
    for env_key, raw in env.items():
        if not env_key.startswith(ENV_PREFIX) or env_key == ENV_PREFIX + "CONFIG":
            continue
        key = env_key[len(ENV_PREFIX) :].lower()
        if key.startswith("test_"):
            continue  # reserved for the test suite's own variables
        if key not in types_:
            raise ConfigError(f"{env_key}: unknown configuration variable")
        values[key] = _coerce(env_key, raw, types_[key], from_env=True)
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        if key not in types_:
            raise ConfigError(f"{key}: unknown configuration key")
        values[key] = _coerce(key, raw, types_[key], from_env=isinstance(raw, str))
    return TusServerConfig(**values)


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    """Accept both flat keys and one level of tables (``[s3] bucket = ..`` is ``s3_bucket``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                out[f"{key}_{sub}"] = subvalue
        else:
            out[key] = value
    return out
