"""Hooks: async callables registered on the app, called at each step of an upload's life.

``pre_create`` runs before anything is stored and may reject the creation
(:class:`HookRejection`) or change the metadata (mutate ``ctx.metadata``). ``pre_finish`` runs
before an upload is marked finished and may reject it the same way (the bytes stay, the
upload stays unfinished). The ``post_*`` hooks run after the response's state is durable, in
the background; their errors are logged, never sent to the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from auth import Principal

from .catalog.uploads import UploadRecord
from .errors import HookRejection

if TYPE_CHECKING:
    from .catalog.files import FileRecord

__all__ = ["CreateContext", "FileHook", "HookRejection", "Hooks", "UploadHook"]

_log = structlog.get_logger("tusserver.hooks")


@dataclass
class CreateContext:
    """What a pre-create hook sees; ``metadata`` may be changed in place."""

    principal: Principal
    length: int | None
    metadata: MutableMapping[str, bytes | None]
    is_partial: bool
    is_final: bool


UploadHook = Callable[[UploadRecord], Awaitable[None]]
FileHook = Callable[["FileRecord"], Awaitable[None]]
PreCreateHook = Callable[[CreateContext], Awaitable[None]]
T = TypeVar("T")


@dataclass
class Hooks:
    pre_create: list[PreCreateHook] = field(default_factory=list)
    post_create: list[UploadHook] = field(default_factory=list)
    post_receive: list[UploadHook] = field(default_factory=list)
    pre_finish: list[UploadHook] = field(default_factory=list)
    post_finish: list[UploadHook] = field(default_factory=list)
    post_terminate: list[UploadHook] = field(default_factory=list)
    #: A file passed validation and is in the object store.
    post_commit: list[FileHook] = field(default_factory=list)
    #: A file was refused by a validator (its reason is on the record).
    post_reject: list[FileHook] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)

    async def run_pre_create(self, ctx: CreateContext) -> None:
        for hook in self.pre_create:
            await hook(ctx)

    async def run_pre_finish(self, record: UploadRecord) -> None:
        for hook in self.pre_finish:
            await hook(record)

    def fire(self, name: str, hooks: Sequence[Callable[[T], Awaitable[None]]], record: T) -> None:
        """Run post-hooks in the background; keep a reference so they are not collected."""
        if not hooks:
            return

        async def run() -> None:
            for hook in hooks:
                try:
                    await hook(record)
                except Exception:
                    _log.exception("hook failed", hook=name, record_id=_id_of(record))

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for background hooks (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _id_of(record: Any) -> str | None:
    return getattr(record, "id", None)
