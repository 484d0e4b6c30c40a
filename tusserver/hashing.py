"""Feeding bytes to hashers without holding up the event loop.

Every place that hashes a body or a stored file (the byte guard of an append, the IETF
draft's digests, the pipeline's inspection, checked downloads) uses :func:`update_all`, so
the rule of where hashing runs is written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["HASH_IN_THREAD", "update_all"]

#: Blocks at least this big are hashed on a worker thread (hashlib releases the GIL there);
#: smaller ones inline, where the thread hop would cost more than the hashing.
HASH_IN_THREAD = 256 * 1024


def _update(hashers: Sequence[Any], block: bytes) -> None:
    for h in hashers:
        h.update(block)


async def update_all(hashers: Sequence[Any], block: bytes) -> None:
    """Feed ``block`` to every hasher of ``hashers`` (one thread hop for all of them)."""
    if not hashers:
        return
    if len(block) >= HASH_IN_THREAD:
        await asyncio.to_thread(_update, hashers, block)
    else:
        _update(hashers, block)
