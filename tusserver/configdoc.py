"""The configuration reference (``docs/configuration.md``), rendered from the config fields.

The Markdown is built from :func:`dataclasses.fields` of :class:`TusServerConfig` and each
field's ``doc``, so the reference cannot say anything the code does not. A test compares the
committed file with :func:`render_markdown`; regenerate it with::

    .venv/bin/python -m tusserver.configdoc docs/configuration.md
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ENV_PREFIX, TusServerConfig

__all__ = ["REGENERATE_COMMAND", "env_var", "render_markdown"]

#: How to rebuild docs/configuration.md after changing a config field.
REGENERATE_COMMAND = ".venv/bin/python -m tusserver.configdoc docs/configuration.md"

_INTRO = f"""\
<!-- Generated from tusserver/config.py by tusserver/configdoc.py. Do not edit by hand:
     {REGENERATE_COMMAND} -->

# Configuration reference

Every setting of tusserver is a field of `tusserver.config.TusServerConfig`. The table below
is generated from those fields, so it lists every key there is, with its default.

## Where settings come from

Sources are applied in this order; a later source overrides an earlier one:

1. the defaults in the table below;
2. a TOML file, named by `--config PATH` or, without that flag, by the `{ENV_PREFIX}CONFIG`
   environment variable;
3. environment variables: `{ENV_PREFIX}` followed by the key in upper case
   (`port` is `{ENV_PREFIX}PORT`);
4. command-line flags: `--config` and `--data-dir` (every command), `--host` and `--port`
   (`serve`).

The configuration is checked once, at start. An unknown key in the TOML file, an unknown
`{ENV_PREFIX}*` variable or a value of the wrong type stops the program with a message naming
the key (`tusserver config show` is a quick way to check a configuration). Variables starting
with `{ENV_PREFIX}TEST_` are left to the test suite and ignored.

Then `serve`, `migrate` (and `user`, `sweep`, `pipeline`) reach what the settings point at
before doing anything else: the database and, when a store is `s3`, the S3 bucket. Each
unusable setting stops the program (exit status 2) with one line that names it and says what
to do: an unknown URL scheme or a synchronous driver in `database_url`, a driver that is not
installed, a database that does not answer, refuses the user or does not exist, an S3 server
that does not answer or refuses the credentials, a bucket that is missing and cannot be
created. `tusserver check` prints the same lines after `FAIL`.

### Values in the TOML file

Values must have their TOML type: `port = 1080`, not `port = "1080"`. A float setting also
accepts an integer. Lists are TOML arrays (`cors_origins = ["https://app.example"]`).

Keys may be written flat or grouped in tables, one level deep: a key `b` in the table `[a]`
is the key `a_b` (`bucket` in `[s3]` is `s3_bucket`). These two files are the same:

```toml
log_format = "json"
log_level = "debug"
```

```toml
[log]
format = "json"
level = "debug"
```

### Values in the environment

Environment variables are strings, converted to the key's type:

- integers and floats: a plain number (`{ENV_PREFIX}MAX_SIZE=1073741824`);
- booleans: `1`, `true`, `yes`, `on` or `0`, `false`, `no`, `off` (any case);
- lists: comma-separated, spaces around items ignored
  (`{ENV_PREFIX}CORS_ORIGINS=https://a.example,https://b.example`);
- paths and strings: as they are.

Keys marked *secret* are shown as `***` by `tusserver config show`.

## Keys
"""


def env_var(name: str) -> str:
    """The environment variable of a config key."""
    return ENV_PREFIX + name.upper()


def _type_label(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if len(args) == 1:
            return _type_label(args[0]) + " (optional)"
    if origin is tuple:
        return "list of strings"
    if typ is Path:
        return "path"
    labels = {bool: "boolean", int: "integer", float: "float", str: "string"}
    label = labels.get(typ)
    if label is None:
        raise TypeError(f"no documentation label for config type {typ!r}")
    return label


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    """A default written as it would be in the TOML file."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Path):
        shown = value.as_posix()
        if not value.is_absolute() and not shown.startswith("."):
            shown = "./" + shown
        return _toml_string(shown)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no documentation form for default {value!r}")


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"config field {f.name} has no default")


def render_markdown() -> str:
    """The whole of ``docs/configuration.md``."""
    hints = typing.get_type_hints(TusServerConfig)
    rows = [
        "| Key (TOML) | Environment variable | Type | Default | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(TusServerConfig):
        doc = str(f.metadata.get("doc", "")).strip()
        if not doc:
            raise ValueError(f"config field {f.name} has no doc")
        if f.metadata.get("secret"):
            doc += " *Secret.*"
        rows.append(
            "| "
            + " | ".join(
                [
                    _code(f.name),
                    _code(env_var(f.name)),
                    _type_label(hints[f.name]),
                    _code(_toml_value(_default(f))),
                    _cell(doc),
                ]
            )
            + " |"
        )
    return _INTRO + "\n" + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tusserver.configdoc [PATH]``: write the reference to PATH or stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = render_markdown()
    if not args:
        sys.stdout.write(text)
        return 0
    if len(args) != 1:
        sys.stderr.write("usage: python -m tusserver.configdoc [PATH]\n")
        return 2
    Path(args[0]).write_text(text, encoding="utf-8", newline="\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
