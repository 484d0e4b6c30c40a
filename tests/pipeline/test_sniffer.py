"""TypeSniffer: libmagic in batches off the event loop, each caller getting its own answer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading

import pytest

from tests.pipeline.test_local_pipeline import png_bytes
from tusserver.pipeline.validators import SNIFF_BYTES, TypeSniffer

_PDF = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
_TEXT = b"Dear reader,\nthis is a plain letter of a few lines.\nRegards\n"


async def test_concurrent_callers_each_get_the_type_of_their_own_bytes() -> None:
    sniffer = TypeSniffer()
    # (Seeded: random bytes are now and then typed as something, e.g. ``MZ`` at the start.)
    binary = [random.Random(seed).randbytes(4096) for seed in range(25)]
    heads = [h for b in binary for h in (png_bytes(extra=100), _PDF, _TEXT, b)]
    got = await asyncio.gather(*(sniffer.sniff(h) for h in heads))
    expected = ["image/png", "application/pdf", "text/plain", "application/octet-stream"] * 25
    assert got == expected


async def test_empty_bytes_need_no_libmagic() -> None:
    assert await TypeSniffer().sniff(b"") == "application/x-empty"


async def test_libmagic_runs_off_the_event_loop_and_sees_at_most_the_sniff_bytes() -> None:
    sniffer = TypeSniffer()
    seen: list[tuple[str, int]] = []

    class Recording:
        def from_buffer(self, head: bytes) -> str:
            seen.append((threading.current_thread().name, len(head)))
            return "application/x-test"

    sniffer._magic = Recording()  # type: ignore[assignment]
    assert await sniffer.sniff(b"x" * (SNIFF_BYTES + 10)) == "application/x-test"
    assert seen == [(seen[0][0], SNIFF_BYTES)]
    assert seen[0][0] != threading.current_thread().name


async def test_an_error_of_libmagic_reaches_its_caller_only() -> None:
    sniffer = TypeSniffer()

    class Failing:
        def from_buffer(self, head: bytes) -> str:
            if head == b"bad":
                raise RuntimeError("libmagic failed")
            return "text/plain"

    sniffer._magic = Failing()  # type: ignore[assignment]
    bad, good = await asyncio.gather(
        sniffer.sniff(b"bad"), sniffer.sniff(b"good"), return_exceptions=True
    )
    assert isinstance(bad, RuntimeError)
    assert good == "text/plain"
    # The sniffer goes on working after an error.
    assert await sniffer.sniff(b"more") == "text/plain"


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    sniffer = TypeSniffer()
    release = threading.Event()

    class Slow:
        def from_buffer(self, head: bytes) -> str:
            release.wait(5)
            return head.decode()

    sniffer._magic = Slow()  # type: ignore[assignment]
    first = asyncio.ensure_future(sniffer.sniff(b"first"))
    second = asyncio.ensure_future(sniffer.sniff(b"second"))
    await asyncio.sleep(0.05)
    first.cancel()
    release.set()
    assert await second == "second"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await sniffer.sniff(b"third") == "third"


async def test_without_an_executor_the_caller_gets_an_error_not_a_hang() -> None:
    loop = asyncio.get_running_loop()
    executor = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(executor)
    executor.shutdown()
    sniffer = TypeSniffer()
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(sniffer.sniff(b"anything"), 5)
    # And the next call tries again rather than waiting on a job that never started.
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
    assert await asyncio.wait_for(sniffer.sniff(_TEXT), 5) == "text/plain"
