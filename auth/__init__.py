"""Identities and access: who is calling, and what they may touch."""

from .principal import Principal

__all__ = ["Principal"]
