"""The sha256 of an upload, computed while its bytes arrive.

Every byte of an upload passes through the server on its way to the store; hashing it there
spares the pipeline a second pass over the finished file (reading it back and hashing it,
which competes with the uploads still arriving). hashlib cannot save a hash state, so the
states live in memory, in the process that receives the bytes, and they are a shortcut
only: the pipeline falls back to reading the file whenever there is no state that covers
the whole file (a restart, an upload received partly elsewhere, a concatenation, an evicted
state, an error).

A state describes exactly the bytes stored, or it is dropped:

- the request that appends takes it (:meth:`RunningDigests.take_for_append`, under the
  upload's lock), only if it ends exactly at the offset the request appends at;
- the bytes the store is handed are hashed on their way (``BodyGuard`` in
  :mod:`tusserver.uploads.guard`), and the state is put back (:meth:`RunningDigests.put`)
  only if the store kept every one of them; any error leaves it dropped;
- the pipeline takes it (:meth:`RunningDigests.take_whole`) only if it ends at the file's
  size.

Only a process that alone writes its uploads may keep states (one process with the
in-process locker, see :func:`tusserver.app.build_runtime`): another process appending to an
upload would make a state stale without this one knowing. Memory is bounded: at most
``limit`` states (the least recently used go first), a few hundred bytes each, whatever the
number of uploads a client opens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

__all__ = ["TRACK_MIN", "RunningDigests"]

#: Uploads whose declared length is below this are not hashed on the way in: the pipeline
#: reads their first bytes anyway (type sniffing), and a small file is hashed in that read.
TRACK_MIN = 1024 * 1024


class RunningDigests:
    """sha256 states of uploads being received in this process, by upload id."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        #: upload id -> (offset the state covers up to, sha256 state)
        self._states: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def take_for_append(self, upload_id: str, offset: int, length: int | None) -> Any | None:
        """The state to advance with the bytes appended at ``offset`` (removed from here
        until :meth:`put` gives it back), a new one at offset 0, or None: not tracked."""
        if offset == 0:
            self._states.pop(upload_id, None)
            if length is not None and length < TRACK_MIN:
                return None
            return hashlib.sha256()
        held = self._states.pop(upload_id, None)
        if held is None or held[0] != offset:
            return None
        return held[1]

    def put(self, upload_id: str, offset: int, state: Any) -> None:
        """``state`` covers the upload's bytes up to ``offset``, all of them stored."""
        self._states[upload_id] = (offset, state)
        self._states.move_to_end(upload_id)
        while len(self._states) > self._limit:
            self._states.popitem(last=False)

    def take_whole(self, upload_id: str, size: int) -> str | None:
        """The hex sha256 of a finished upload of ``size`` bytes if a state covers exactly
        that, else None (the caller reads the file). The state is removed either way."""
        held = self._states.pop(upload_id, None)
        if held is None or held[0] != size:
            return None
        return str(held[1].hexdigest())

    def discard(self, upload_id: str) -> None:
        self._states.pop(upload_id, None)
