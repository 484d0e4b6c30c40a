"""Run a command on hostile input in a child process with CPU, memory and wall-time limits.

The limits are set by the parent on the child (``prlimit``) before the child is given its
work on standard input, so no code of the child runs on the input unlimited, and nothing runs
between fork and exec (no ``preexec_fn``, which is unsafe in a threaded parent). Processes the
child starts (ffprobe, ffmpeg) inherit the limits. The child has a session of its own: the wall
timeout kills the whole group, grandchildren included. It also runs at a lower CPU priority
(``nice``, inherited by its tools as well): when the cores are busy, the requests of the
upload path come first and the decoding takes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import resource
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Limits", "Outcome", "SandboxResult", "run_limited"]

#: Bytes of the child's standard error kept (the end is what explains a failure).
_STDERR_KEEP = 8192
#: Largest standard output accepted from the child (its JSON answer).
_STDOUT_MAX = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_seconds: int
    memory_bytes: int
    wall_seconds: float
    #: Added to the parent's nice value for the child (capped at 19); 0 keeps the parent's.
    nice: int = 10


class Outcome(enum.Enum):
    OK = "ok"  # exited (with any status): read its answer
    CPU = "cpu"  # killed for using its CPU time
    MEMORY = "memory"  # out of address space (as the child said, or the exit status tells)
    TIMEOUT = "timeout"  # killed by the wall-clock timeout
    CRASHED = "crashed"  # killed by another signal (SIGSEGV, SIGABRT, ...)


@dataclass(frozen=True, slots=True)
class SandboxResult:
    outcome: Outcome
    returncode: int | None
    stdout: bytes
    stderr: bytes

    def describe(self) -> str:
        """What went wrong, for a file's reason."""
        if self.outcome is Outcome.CPU:
            return "the decoder exceeded its CPU time limit"
        if self.outcome is Outcome.MEMORY:
            return "the decoder exceeded its memory limit"
        if self.outcome is Outcome.TIMEOUT:
            return "the decoder exceeded its time limit"
        if self.outcome is Outcome.CRASHED:
            sig = -(self.returncode or 0)
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return f"the decoder crashed ({name})"
        return f"the decoder failed (exit status {self.returncode})"


def _limit(pid: int, limits: Limits) -> None:
    # Soft CPU limit: SIGXCPU; the hard limit a second later: SIGKILL.
    resource.prlimit(pid, resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.prlimit(pid, resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.prlimit(pid, resource.RLIMIT_CORE, (0, 0))
    if limits.nice > 0:
        # Raising one's own child's nice value needs no privilege (lowering it would).
        own = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, pid, min(19, own + limits.nice))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_limited(
    argv: Sequence[str],
    stdin: bytes,
    limits: Limits,
    *,
    env: Mapping[str, str] | None = None,
) -> SandboxResult:
    """Start ``argv``, limit it, give it ``stdin`` and wait for it (never blocking the loop).

    The child must read its standard input before it touches anything hostile: its limits
    are in place by then.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=dict(env) if env is not None else None,
        limit=_STDOUT_MAX,
    )
    try:
        _limit(proc.pid, limits)
    except (OSError, ValueError):
        _kill_group(proc.pid)
        await proc.wait()
        raise
    timed_out = False
    try:
        async with asyncio.timeout(limits.wall_seconds):
            stdout, stderr = await proc.communicate(stdin)
    except TimeoutError:
        timed_out = True
        _kill_group(proc.pid)
        with contextlib.suppress(Exception):
            await proc.communicate()
        stdout, stderr = b"", b""
    except BaseException:
        _kill_group(proc.pid)
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        raise
    finally:
        # Grandchildren left behind by a child that exited early go too.
        _kill_group(proc.pid)
    code = proc.returncode
    stdout, stderr = stdout[:_STDOUT_MAX], stderr[-_STDERR_KEEP:]
    if timed_out:
        return SandboxResult(Outcome.TIMEOUT, code, stdout, stderr)
    if code is not None and code < 0:
        if -code in (signal.SIGXCPU, signal.SIGKILL):
            # SIGKILL without our timeout is the hard CPU limit (or the kernel's OOM killer).
            return SandboxResult(Outcome.CPU, code, stdout, stderr)
        return SandboxResult(Outcome.CRASHED, code, stdout, stderr)
    if b"MemoryError" in stderr or b"Cannot allocate memory" in stderr:
        return SandboxResult(Outcome.MEMORY, code, stdout, stderr)
    return SandboxResult(Outcome.OK, code, stdout, stderr)
