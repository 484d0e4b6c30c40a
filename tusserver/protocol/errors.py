"""Compatibility re-export: the error table lives in :mod:`tusserver.errors`."""

from __future__ import annotations

from ..errors import *  # noqa: F403
from ..errors import __all__ as __all__
