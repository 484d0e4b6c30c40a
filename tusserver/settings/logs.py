"""The log output."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._base import ConfigError, doc

__all__ = ["LogSettings"]


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """The format and level of the log."""

    log_format: str = field(
        default="console", metadata=doc("`console` (human) or `json` (one object per line).")
    )
    log_level: str = field(default="info", metadata=doc("debug, info, warning or error."))

    def __post_init__(self) -> None:
        if self.log_format not in ("console", "json"):
            raise ConfigError("log_format: must be 'console' or 'json'")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("log_level: must be debug, info, warning or error")
