"""The JSON API: files, search, download (and later auth and analytics)."""

from .files import FilesApi

__all__ = ["FilesApi"]
