"""Login latency: what a sign-in costs with the server's password hashing (issue #16 item 9).

    .venv/bin/python benchmarks/login_bench.py                    # this checkout
    .venv/bin/python benchmarks/login_bench.py --source /other/checkout --rounds 40

Starts ``tusserver serve`` from ``--source`` (default: this checkout) on SQLite with auth on
and every limit far above the load, adds a user with the CLI (so the hash is the one that
version makes), then times sequential logins: right password, wrong password, and an
unknown user. Prints p50 / p90 / max in milliseconds; one client, one request at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.services import free_port  # noqa: E402

USER, PASSWORD = "bench", "bench-password-123"
HIGH = "1000000000"


def _env(source: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSERVER_")}
    env.update(
        PYTHONPATH=str(source), TUSSERVER_DATA_DIR=str(data), TUSSERVER_AUTH="jwt",
        TUSSERVER_LOG_LEVEL="warning", TUSSERVER_RATE_LIMIT_LOGINS=HIGH,
        TUSSERVER_RATE_LIMIT_LOGINS_BURST=HIGH, TUSSERVER_RATE_LIMIT_LOGINS_WIDE=HIGH,
        TUSSERVER_RATE_LIMIT_LOGINS_WIDE_BURST=HIGH,
    )  # fmt: skip
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from tusserver.cli import main; raise SystemExit(main())", *args]


async def _time(s: aiohttp.ClientSession, url: str, user: str, pw: str, want: int) -> float:
    started = time.perf_counter()
    async with s.post(url, json={"username": user, "password": pw}) as r:
        await r.read()
        if r.status != want:
            raise RuntimeError(f"login answered {r.status}, expected {want}")
    return (time.perf_counter() - started) * 1000


def _summary(name: str, ms: list[float]) -> str:
    ms = sorted(ms)
    p90 = ms[int(len(ms) * 0.9) - 1]
    return f"{name:16} p50 {statistics.median(ms):7.1f} ms  p90 {p90:7.1f} ms  max {ms[-1]:7.1f} ms"


async def bench(source: Path, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = _env(source, data)
        subprocess.run(
            _cli("user", "add", USER), input=PASSWORD + "\n", text=True, check=True, env=env,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        port = free_port()
        proc = subprocess.Popen(
            _cli("serve", "--host", "127.0.0.1", "--port", str(port)), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/api/v1/auth/login"
            async with aiohttp.ClientSession() as s:
                for _ in range(300):
                    try:
                        async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
                await _time(s, url, USER, PASSWORD, 200)  # warm-up (and a rehash, if due)
                right = [await _time(s, url, USER, PASSWORD, 200) for _ in range(rounds)]
                wrong = [await _time(s, url, USER, "wrong password", 401) for _ in range(rounds)]
                ghost = [
                    await _time(s, url, "nobody", "wrong password", 401) for _ in range(rounds)
                ]
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"source: {source}  ({rounds} logins each)")
    print(_summary("right password", right))
    print(_summary("wrong password", wrong))
    print(_summary("unknown user", ghost))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REPO, help="checkout to run the server from")
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    asyncio.run(bench(args.source.resolve(), args.rounds))


if __name__ == "__main__":
    main()
