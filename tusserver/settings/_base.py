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


def check_non_negative_numbers(section: object, *names: str) -> None:
    """Durations and rates: numbers that must not be negative (or NaN)."""
    for name in names:
        # "not >= 0" also refuses NaN.
        if not getattr(section, name) >= 0:
            raise ConfigError(f"{name}: must be a non-negative number")
