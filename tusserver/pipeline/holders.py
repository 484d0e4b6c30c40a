"""Who holds a pipeline lease, so a restarted process can take back what its dead
predecessor held instead of waiting for the lease to run out.

A worker claims a file with a lease (``files.lease_until``) that it renews while it lives;
another worker takes the file once the lease has run out. That is the only safe rule across
machines, but after a crash on one machine it leaves the files the dead process held waiting
for a whole lease (15 minutes by default). So each claim also names its holder: the host, the
PID namespace, the boot, the PID and the process's start time. A process on the same host and
in the same PID namespace can tell for sure that such a holder is gone: the machine rebooted
since, or no process with that PID and that start time exists any more (a reused PID has
another start time). Anything else - another host, another container, no ``/proc`` - is left
to the lease.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Holder"]

_PROC = Path("/proc")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _start_time(proc: Path, pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ('' if there is no such process)."""
    stat = _read(proc / str(pid) / "stat")
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    _, _, rest = stat.rpartition(")")
    fields = rest.split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True, slots=True)
class Holder:
    """One process, as far as leases are concerned: ``host/pidns/boot/pid/start``."""

    host: str
    pidns: str
    boot: str
    pid: int
    start: str

    @classmethod
    def of_this_process(cls, proc: Path = _PROC) -> Holder:
        pidns = ""
        with contextlib.suppress(OSError):
            pidns = os.readlink(proc / "self" / "ns" / "pid")
        pid = os.getpid()
        return cls(
            host=socket.gethostname()[:64],
            pidns=pidns.removeprefix("pid:").strip("[]"),
            boot=_read(proc / "sys" / "kernel" / "random" / "boot_id").replace("-", ""),
            pid=pid,
            start=_start_time(proc, pid),
        )

    def __str__(self) -> str:
        return f"{self.host}/{self.pidns}/{self.boot}/{self.pid}/{self.start}"

    @property
    def scope(self) -> str:
        """The prefix shared by every holder this process can judge."""
        return f"{self.host}/{self.pidns}/"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        parts = text.rsplit("/", 4)
        if len(parts) != 5 or not parts[3].isdigit():
            return None
        host, pidns, boot, pid, start = parts
        return cls(host=host, pidns=pidns, boot=boot, pid=int(pid), start=start)

    def knows_gone(self, other: Holder, proc: Path = _PROC) -> bool:
        """True only if ``other`` surely no longer runs (judged from this process)."""
        if not (self.pidns and self.boot and self.start and other.boot and other.start):
            return False
        if (other.host, other.pidns) != (self.host, self.pidns):
            return False
        if other.boot != self.boot:
            return True  # the machine rebooted since that claim
        if other.pid == self.pid:
            return other.start != self.start
        return _start_time(proc, other.pid) != other.start
