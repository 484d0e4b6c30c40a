"""Bodies being received: the in-flight gauge, byte counters, and release at shutdown.

Shared by the tus and the IETF-draft handlers, which append through the same service.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..metrics import Metrics
from .body import BodyReader, Interruption

__all__ = ["AppendTracker"]


class AppendTracker:
    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._active: set[BodyReader] = set()

    @contextlib.contextmanager
    def receiving(self, reader: BodyReader) -> Iterator[None]:
        """While a body is being read and stored."""
        if self._metrics is not None:
            self._metrics.in_flight.inc()
        self._active.add(reader)
        try:
            yield
        finally:
            self._active.discard(reader)
            if self._metrics is not None:
                self._metrics.in_flight.dec()

    def stored(self, before: int, after: int | None, *, finished: bool) -> None:
        """Count what one append stored (and whether it finished the upload)."""
        if self._metrics is None or after is None or after <= before:
            return
        self._metrics.bytes_received.inc(after - before)
        if finished:
            self._metrics.uploads.labels("finished").inc()

    def release_all(self) -> None:
        """At shutdown: every body stops here; what arrived is kept."""
        for reader in list(self._active):
            reader.stop(Interruption.SHUTDOWN)
