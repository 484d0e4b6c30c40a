"""Build hooks (metadata is in setup.cfg): the web UI's npm bundles become package data.

The upload page needs Uppy and Chart.js, which come from npm as ``package-lock.json`` pins
them (never from a CDN, never committed). Building the package (``python -m build``, ``pip
wheel .``) copies the few files the server serves from ``node_modules`` into the package as
``tusserver/web/vendor/<npm package>/...``; the server reads them there, so an installed wheel
needs neither Node.js nor a checkout. Run ``npm ci`` before building: a missing bundle, or a
``node_modules`` that does not match the lock file, stops the build with a message.

The sdist carries the copied files too, so a wheel built from it (what ``python -m build``
does) has them without ``node_modules``. Editable installs (``pip install -e``) copy nothing:
the server then falls back to the checkout's ``node_modules``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
#: Where the bundles go, inside the source tree layout (and the package).
VENDOR = Path("tusserver", "web", "vendor")
#: npm package -> its files the server needs (the dist bundle and the license).
BUNDLES = {
    "uppy": ("dist/uppy.min.js", "dist/uppy.min.css", "LICENSE"),
    "chart.js": ("dist/chart.umd.min.js", "LICENSE.md"),
}
#: Written next to the bundles: the npm versions they were taken from.
VERSIONS = "versions.json"


def _locked_versions() -> dict[str, str]:
    lock_path = ROOT / "package-lock.json"
    try:
        lock = json.loads(lock_path.read_text())
    except OSError as exc:
        raise SetupError(f"cannot read {lock_path}: {exc}") from None
    packages = lock.get("packages", {})
    out = {}
    for name in BUNDLES:
        entry = packages.get(f"node_modules/{name}")
        if not entry or "version" not in entry:
            raise SetupError(f"package-lock.json does not pin {name}")
        out[name] = entry["version"]
    return out


def vendor_files() -> dict[Path, Path]:
    """Destination (relative to the package root) -> source file, checked against the lock.

    From ``node_modules`` when it is there (a checkout after ``npm ci``), else from the
    ``tusserver/web/vendor`` an sdist carries.
    """
    locked = _locked_versions()
    found: dict[Path, Path] = {}
    for name, files in BUNDLES.items():
        npm_dir = ROOT / "node_modules" / name
        if npm_dir.is_dir():
            try:
                version = json.loads((npm_dir / "package.json").read_text())["version"]
            except (OSError, ValueError, KeyError):
                version = "unknown"
            base = npm_dir
        else:
            try:
                version = json.loads((ROOT / VENDOR / VERSIONS).read_text())[name]
            except (OSError, ValueError, KeyError):
                raise SetupError(
                    f"the web UI's npm package {name!r} is missing: run `npm ci` in {ROOT} "
                    "before building the package"
                ) from None
            base = ROOT / VENDOR / name
        if version != locked[name]:
            raise SetupError(
                f"node_modules has {name} {version} but package-lock.json pins "
                f"{locked[name]}: run `npm ci` before building the package"
            )
        for rel in files:
            src = base / rel
            if not src.is_file():
                raise SetupError(f"{src} is missing: run `npm ci` before building the package")
            found[VENDOR / name / rel] = src
    return found


def _copy_vendor(dest_root: Path) -> list[str]:
    written = []
    for rel, src in vendor_files().items():
        dest = dest_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        written.append(str(dest))
    versions = dest_root / VENDOR / VERSIONS
    versions.write_text(json.dumps(_locked_versions(), indent=2, sort_keys=True) + "\n")
    written.append(str(versions))
    return written


class BuildPyWithVendor(build_py):
    """build_py, plus the web UI's bundles (except for editable installs)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            self._vendor_outputs = _copy_vendor(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = super().get_outputs(include_bytecode)
        return outputs + list(getattr(self, "_vendor_outputs", []))


class SdistWithVendor(sdist):
    """sdist, carrying the bundles so a wheel can be built from it without node_modules."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        _copy_vendor(Path(base_dir))


setup(cmdclass={"build_py": BuildPyWithVendor, "sdist": SdistWithVendor})
