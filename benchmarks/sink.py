"""A trivial aiohttp "tus-shaped" sink: the floor a Python/aiohttp upload server can reach.

    python benchmarks/sink.py --port PORT --data-dir DIR [--processes N]

POST /uploads/ -> 201 with Location (a body, creation-with-upload, is written to the file
and answered with Upload-Offset); PATCH /uploads/<id> -> the body streamed to a file with
aiofiles, then 204 with Upload-Offset; HEAD /uploads/<id> -> Upload-Offset from the file's size.
No validation, no database, no locking, no fsync, nothing else: it only exists to measure what
tusserver costs on top of aiohttp. ``--processes N`` forks N-1 more processes before serving,
each with its own listening socket on the port (SO_REUSEPORT: the kernel spreads the new
connections over them): the ceiling of N aiohttp processes on the machine. Bodies of a POST are small (the small-upload workload) and
written with a plain write, the cheapest path a bare handler has.
"""

from __future__ import annotations

import argparse
import os
import uuid
from pathlib import Path

import aiofiles
from aiohttp import web

_DATA_DIR = web.AppKey("data_dir", Path)
_BLOCK = 64 * 1024


async def post(request: web.Request) -> web.Response:
    upload_id = uuid.uuid4().hex
    body = await request.read() if request.body_exists else b""
    with open(request.app[_DATA_DIR] / upload_id, "wb") as fh:
        fh.write(body)
    headers = {"Location": f"/uploads/{upload_id}", "Tus-Resumable": "1.0.0"}
    if body:
        headers["Upload-Offset"] = str(len(body))
    return web.Response(status=201, headers=headers)


async def head(request: web.Request) -> web.Response:
    size = (request.app[_DATA_DIR] / request.match_info["upload_id"]).stat().st_size
    return web.Response(status=200, headers={"Upload-Offset": str(size), "Tus-Resumable": "1.0.0"})


async def patch(request: web.Request) -> web.Response:
    offset = int(request.headers["Upload-Offset"])
    path = request.app[_DATA_DIR] / request.match_info["upload_id"]
    async with aiofiles.open(path, "r+b") as fh:
        await fh.seek(offset)
        async for block in request.content.iter_chunked(_BLOCK):
            await fh.write(block)
            offset += len(block)
    return web.Response(
        status=204, headers={"Upload-Offset": str(offset), "Tus-Resumable": "1.0.0"}
    )


async def options(_request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Tus-Version": "1.0.0"})


def make_app(data_dir: Path) -> web.Application:
    app = web.Application()
    app[_DATA_DIR] = data_dir
    app.add_routes(
        [
            web.post("/uploads/", post),
            web.options("/uploads/", options),
            web.patch("/uploads/{upload_id}", patch),
            web.head("/uploads/{upload_id}", head),
        ]
    )
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--processes", type=int, default=1)
    args = p.parse_args()
    os.makedirs(args.data_dir, exist_ok=True)
    for _ in range(args.processes - 1):
        if os.fork() == 0:
            break  # a child serves too (the parent's process group is stopped as a whole)
    web.run_app(
        make_app(args.data_dir),
        host=args.host,
        port=args.port,
        reuse_port=args.processes > 1,
        access_log=None,
        print=lambda *_: None,
    )


if __name__ == "__main__":
    main()
