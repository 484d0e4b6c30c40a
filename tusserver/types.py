"""Plain domain types shared by the layers: what a client asked for, once parsed.

The HTTP adapters (``tusserver.protocol``) build these from headers; the lifecycle
(``tusserver.uploads``) acts on them. Nothing here imports anything of the service.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_INT", "Checksum", "ConcatFinal", "ConcatPartial"]

#: The largest length or offset the service accepts (a signed 64-bit integer).
MAX_INT = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ConcatPartial:
    """A partial upload, to be concatenated into a final one (``Upload-Concat: partial``)."""


@dataclass(frozen=True, slots=True)
class ConcatFinal:
    """A final upload made of the partial uploads named, in order."""

    upload_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Checksum:
    """A digest the client sent for a chunk: ``algorithm`` is a hashlib name."""

    algorithm: str
    digest: bytes
