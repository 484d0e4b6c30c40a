"""The web UI without a checkout: ``python -m build`` puts the npm bundles into the wheel, and
``tusserver serve`` installed from that wheel, outside the checkout and with no Node.js on
the path, serves the upload page and its /vendor/* files.

The package is built once (sdist, then the wheel from the sdist, as ``python -m build``
does). The wheel goes into a fresh virtualenv with ``--no-deps``; its dependencies come from
the test run's own environment through a path entry (installing them from PyPI would take
minutes and prove nothing about the wheel). ``tusserver`` itself is imported from the wheel.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import free_port
from tests.web.modgraph import Fetch, walk

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
#: URL of each vendor bundle -> its file in node_modules.
BUNDLES = {
    "/vendor/uppy.min.js": "uppy/dist/uppy.min.js",
    "/vendor/uppy.min.css": "uppy/dist/uppy.min.css",
    "/vendor/chart.js": "chart.js/dist/chart.umd.min.js",
}


def _source_copy(dest: Path) -> None:
    """The checkout's files (tracked and new, not ignored) without build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if rel == "node_modules" or not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    (dest / "node_modules").symlink_to(NODE_MODULES.resolve(), target_is_directory=True)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (NODE_MODULES / "uppy/dist/uppy.min.js").is_file():
        pytest.fail("node_modules is missing: run `npm ci` (make test does)")
    src = tmp_path_factory.mktemp("src")
    _source_copy(src)
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    wheels = list(out.glob("tusserver-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (outside the checkout) with the wheel installed: its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        check=True, timeout=300,
        # A checkout on PYTHONPATH (with its egg-info) would look installed to pip already.
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )  # fmt: skip
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    # The dependencies: a plain path entry (the .pth files there, e.g. the editable install
    # of the checkout, are not run).
    Path(site, "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_wheel_carries_the_locked_bundles(wheel: Path) -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for rel in BUNDLES.values():
            name = f"tusserver/web/vendor/{rel}"
            assert name in names, sorted(n for n in names if "vendor" in n)
            assert zf.read(name) == (NODE_MODULES / rel).read_bytes(), name
        versions = json.loads(zf.read("tusserver/web/vendor/versions.json"))
        assert "tusserver/web/vendor/uppy/LICENSE" in names
    assert versions == {
        "uppy": lock["node_modules/uppy"]["version"],
        "chart.js": lock["node_modules/chart.js"]["version"],
    }


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    """`tusserver serve` from the fresh virtualenv, in an empty directory, PATH = its bin/."""
    env = {"PATH": str(installed), "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    assert shutil.which("node", path=env["PATH"]) is None
    assert shutil.which("npm", path=env["PATH"]) is None
    where = subprocess.run(
        [str(installed / "python"), "-c", "import tusserver; print(tusserver.__file__)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(installed.parent)), where  # the wheel, not the checkout
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(installed / "tusserver"), "--data-dir", "data", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if _get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_installed_wheel_serves_the_upload_page(served: str) -> None:
    status, body, ctype = _get(f"{served}/app/")
    assert status == 200 and ctype.startswith("text/html")
    html = body.decode()
    urls = re.findall(r'(?:src|href)="(/(?:static|vendor)/[^"]+)"', html)
    by_path = {u.split("?")[0]: u for u in urls}
    assert set(BUNDLES) <= set(by_path), urls
    for path, rel in BUNDLES.items():
        expected = (NODE_MODULES / rel).read_bytes()
        # The page links the bundle by the hash of what the server has: the npm file.
        assert by_path[path].endswith("?v=" + hashlib.sha256(expected).hexdigest()[:16])
        status, got, ctype = _get(served + by_path[path])
        assert status == 200, (path, got[:300])
        assert got == expected, path
        assert ctype.startswith("text/css" if path.endswith(".css") else "text/javascript")
    status, got, _ = _get(served + by_path["/static/app.js"])
    assert status == 200
    assert got == (ROOT / "tusserver/web/static/app.js").read_bytes()
    # Every module app.js imports, directly or not, is in the wheel and served.
    graph = asyncio.run(walk(html, _fetch_from(served)))
    assert graph.failures == []
    assert set(graph.modules) == {
        f"/static/{p.name}" for p in (ROOT / "tusserver/web/static").glob("*.js")
    }


def _fetch_from(base: str) -> Fetch:
    async def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with urllib.request.urlopen(base + url, timeout=10) as resp:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                return resp.status, resp.read(), headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}

    return fetch
