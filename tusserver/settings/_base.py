"""What every settings section shares: the error, the field documentation, common checks."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "check_at_least_one",
    "check_non_negative_numbers",
    "check_not_negative",
    "check_port",
    "doc",
]


class ConfigError(Exception):
    """A configuration value is missing, unknown or of the wrong type; names the key."""


def doc(text: str, *, secret: bool = False) -> dict[str, Any]:
    """The metadata of a setting: its line in docs/configuration.md, whether it is secret."""
    return {"doc": text, "secret": secret}


def check_port(name: str, value: int) -> None:
    if not (0 < value < 65536):
        raise ConfigError(f"{name}: {value} is not a TCP port")


def check_not_negative(section: object, *names: str) -> None:
    """Sizes and counts where 0 means "no limit"."""
    for name in names:
        if getattr(section, name) < 0:
            raise ConfigError(f"{name}: must not be negative")


def check_at_least_one(section: object, *names: str) -> None:
    for name in names:
        if getattr(section, name) < 1:
            raise ConfigError(f"{name}: must be at least 1")


#: The largest duration (seconds) or rate a setting takes: 100 years. Infinity (valid TOML,
#: and float("inf") reads it from the environment) or 1e12 seconds would overflow a date.
MAX_NUMBER = 100 * 365 * 86400


def check_non_negative_numbers(section: object, *names: str) -> None:
    """Durations and rates: numbers that must not be negative, NaN or past MAX_NUMBER."""
    for name in names:
        # "not 0 <= x" also refuses NaN.
        if not 0 <= getattr(section, name) <= MAX_NUMBER:
            raise ConfigError(f"{name}: must be a number from 0 to {MAX_NUMBER} (100 years)")
