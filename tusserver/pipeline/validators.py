"""Validators: small pluggable classes, each deciding on one aspect of a finished file.

The pipeline streams the file once to learn its size, sha256 and first bytes (a
:class:`Candidate`), then asks each validator in order. A validator that needs the bytes again
(the virus scan) streams them through ``candidate.open()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import magic

from ..futures import settle
from .clamav import ClamdClient, ScanError, ScannerUnavailable

__all__ = [
    "CATEGORIES",
    "Candidate",
    "ChecksumValidator",
    "ClamAVValidator",
    "PolicyValidator",
    "TypeSniffer",
    "Validator",
    "Verdict",
    "VerdictKind",
    "category_of",
    "is_mpeg_ts",
]

CATEGORIES = ("video", "audio", "image", "document", "other")

_DOCUMENT_TYPES = frozenset(
    {
        "application/pdf",
        "application/msword",
        "application/rtf",
        "application/epub+zip",
        "application/vnd.ms-excel",
        "application/vnd.ms-powerpoint",
        "application/vnd.oasis.opendocument.text",
        "application/vnd.oasis.opendocument.spreadsheet",
        "application/vnd.oasis.opendocument.presentation",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "text/plain",
        "text/csv",
        "text/markdown",
    }
)

#: Bytes of the head given to libmagic (enough for every container format we care about).
SNIFF_BYTES = 64 * 1024


#: MPEG-TS: 188-byte packets, each beginning with the sync byte 0x47.
_TS_PACKET, _TS_SYNC, _TS_PACKETS_SEEN = 188, 0x47, 16


def is_mpeg_ts(head: bytes) -> bool:
    """An MPEG transport stream: the sync byte at the start of each of its first 16 packets
    (1 in 2**128 of random data). libmagic's rule also wants the first packet to be the
    PAT, and ffmpeg, HLS segments and recorders built on it write the SDT first."""
    if len(head) < _TS_PACKET * _TS_PACKETS_SEEN:
        return False
    return all(head[i * _TS_PACKET] == _TS_SYNC for i in range(_TS_PACKETS_SEEN))


def category_of(mime: str | None) -> str:
    """video, audio, image, document or other, from a detected MIME type."""
    if not mime:
        return "other"
    major = mime.split("/", 1)[0]
    if major in ("video", "audio", "image"):
        return major
    if mime in _DOCUMENT_TYPES:
        return "document"
    return "other"


class TypeSniffer:
    """libmagic off the event loop, in batches.

    libmagic is CPU work (0.2 ms on bytes it does not recognise, more on some inputs), so it
    runs in the default executor, not on the loop. A hop per call (``asyncio.to_thread``)
    cost about as much CPU again as libmagic itself: a context copy, a pool work item, a
    wake-up of the loop per result, and a GIL hand-over each way. Here the heads asked for
    meanwhile are sniffed one after the other by one executor job, and each batch's results
    come back to the loop in one call; the job ends when nothing is left.

    One job at a time uses the libmagic handle (a handle is not safe for concurrent use).
    """

    def __init__(self) -> None:
        self._magic: magic.Magic | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple[bytes, asyncio.Future[str]]] = []
        self._draining = False

    async def sniff(self, head: bytes) -> str:
        """The MIME type libmagic sees in the first bytes."""
        if not head:
            return "application/x-empty"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()
        with self._lock:
            self._pending.append((head[:SNIFF_BYTES], future))
            start = not self._draining
            self._draining = True
        if start:
            try:
                loop.run_in_executor(None, self._drain)
            except BaseException as exc:  # no executor any more (the loop is closing)
                with self._lock:
                    failed, self._pending = self._pending, []
                    self._draining = False
                _hand_back([(f, False, exc) for _, f in failed])
        detected = await future
        if detected == "application/octet-stream" and is_mpeg_ts(head):
            return "video/mp2t"
        return detected

    def _drain(self) -> None:
        """In the executor: sniff what is pending, batch after batch, until nothing is."""
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            results: list[_Result] = []
            for head, future in batch:
                try:
                    if self._magic is None:
                        self._magic = magic.Magic(mime=True)
                    results.append((future, True, self._magic.from_buffer(head)))
                except Exception as exc:  # handed to the caller, as a direct call would raise
                    results.append((future, False, exc))
            _hand_back(results)


#: A caller's future, whether libmagic answered, and its answer (or the error).
_Result = tuple["asyncio.Future[str]", bool, object]


def _hand_back(results: list[_Result]) -> None:
    """From any thread: each future's outcome, set on its own loop (one call per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Result]] = {}
    for item in results:
        by_loop.setdefault(item[0].get_loop(), []).append(item)
    for loop, done in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
            loop.call_soon_threadsafe(_deliver, done)


def _deliver(done: list[_Result]) -> None:
    """On the loop: results (or errors) to the callers still waiting."""
    for future, ok, value in done:
        settle(future, ok, value)


class VerdictKind(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    #: Cannot decide now (scanner unreachable): try again later.
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str | None = None
    note: str | None = None
    #: Why, for monitoring, from a short fixed set: ``virus``, ``type``, ``size``,
    #: ``corrupt_media``, ``checksum``, ``scan_failed``, ``other``.
    category: str = "other"

    @classmethod
    def accept(cls, note: str | None = None) -> Verdict:
        return cls(VerdictKind.ACCEPT, note=note)

    @classmethod
    def reject(cls, reason: str, *, category: str = "other") -> Verdict:
        return cls(VerdictKind.REJECT, reason, category=category)

    @classmethod
    def retry(cls, reason: str) -> Verdict:
        return cls(VerdictKind.RETRY, reason)


@dataclass
class Candidate:
    """What validators know of a finished file."""

    size: int
    sha256: str
    head: bytes
    detected_type: str
    declared_type: str | None
    metadata: Mapping[str, str]
    open: Callable[[], AsyncIterator[bytes]]
    notes: list[str] = field(default_factory=list)

    @property
    def category(self) -> str:
        return category_of(self.detected_type)


class Validator(Protocol):
    name: str

    async def check(self, candidate: Candidate) -> Verdict:
        """Accept, reject with a reason, or ask to retry later."""


class PolicyValidator:
    """Allowed categories and the maximum size of each, on the detected type."""

    name = "policy"

    def __init__(self, *, allowed: tuple[str, ...], max_sizes: Mapping[str, int]) -> None:
        self._allowed = frozenset(allowed)
        self._max = dict(max_sizes)

    def check_type(self, detected_type: str) -> str | None:
        """The reason a type is refused, or None (also used for the early first-bytes check)."""
        category = category_of(detected_type)
        if category not in self._allowed:
            return f"type {detected_type} ({category}) is not accepted here"
        return None

    async def check(self, candidate: Candidate) -> Verdict:
        reason = self.check_type(candidate.detected_type)
        if reason:
            return Verdict.reject(reason, category="type")
        limit = self._max.get(candidate.category, 0)
        if limit and candidate.size > limit:
            return Verdict.reject(
                f"{candidate.category} files may be at most {limit} bytes; "
                f"this one has {candidate.size}",
                category="size",
            )
        return Verdict.accept()


class ChecksumValidator:
    """The whole file's checksum, when the client declared one in its metadata.

    Accepted metadata: ``sha256`` (hex or base64 digest) or ``checksum`` as
    ``sha256 <base64>`` (the tus Upload-Checksum form).
    """

    name = "checksum"

    async def check(self, candidate: Candidate) -> Verdict:
        declared = _declared_sha256(candidate.metadata)
        if declared is None:
            return Verdict.accept()
        if declared == "invalid":
            return Verdict.reject("the declared checksum is malformed", category="checksum")
        if declared != candidate.sha256:
            return Verdict.reject(
                "the file does not match its declared sha256 checksum", category="checksum"
            )
        return Verdict.accept()


def _declared_sha256(meta: Mapping[str, str]) -> str | None:
    raw = meta.get("sha256")
    if raw is None and "checksum" in meta:
        alg, _, value = meta["checksum"].partition(" ")
        if alg.lower() != "sha256":
            return None
        raw = value
    if raw is None:
        return None
    raw = raw.strip()
    if len(raw) == 64 and all(c in "0123456789abcdefABCDEF" for c in raw):
        return raw.lower()
    try:
        digest = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return "invalid"
    return digest.hex() if len(digest) == 32 else "invalid"


class ClamAVValidator:
    """Virus scan through clamd. Unreachable clamd: retry, or accept unscanned if optional."""

    name = "clamav"

    def __init__(self, client: ClamdClient, *, required: bool) -> None:
        self._client = client
        self._required = required

    async def check(self, candidate: Candidate) -> Verdict:
        try:
            result = await self._client.scan(candidate.open())
        except ScannerUnavailable as exc:
            if self._required:
                return Verdict.retry(f"waiting for the virus scanner: {exc}")
            return Verdict.accept(note="not scanned: the virus scanner was unreachable")
        except ScanError as exc:
            if exc.transient:
                # Never accepted unscanned: retried, and failed once the attempts run out.
                return Verdict.retry(str(exc))
            return Verdict.reject(str(exc), category="scan_failed")
        if not result.clean:
            return Verdict.reject(f"virus found: {result.signature}", category="virus")
        return Verdict.accept()
