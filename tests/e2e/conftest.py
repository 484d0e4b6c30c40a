"""Fixtures of the end-to-end tests: real server processes on free ports, in tmp dirs.

``server``          function: a running ServerProcess on ``tmp_path/"data"`` (default config),
                    the test's own: it may kill, terminate and restart it
``server_factory``  function: ``server_factory(env=None, data_dir=None)`` starts more servers
                    (e.g. with TUSSERVER_* settings); all are killed at teardown
``shared_server``   one server per test module (default config), for tests that only create and
                    use their own uploads and never stop the server: a server start costs about
                    a second, and most tests need no server of their own

The log of every server a failed test used is attached to its report ("server log ...").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from .server import ServerProcess

_SERVERS = pytest.StashKey[list[ServerProcess]]()

ServerFactory = Callable[..., ServerProcess]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for i, srv in enumerate(item.stash.get(_SERVERS, [])):
            report.sections.append((f"server log {i} ({srv.log_path})", srv.log()))
    return report


def _used(request: pytest.FixtureRequest) -> list[ServerProcess]:
    return request.node.stash.setdefault(_SERVERS, [])


@pytest.fixture
def server_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[ServerProcess] = []

    def start(env: Mapping[str, str] | None = None, data_dir: Path | None = None) -> ServerProcess:
        where = data_dir or tmp_path / f"data{len(started) or ''}"
        srv = ServerProcess(where, env, start=False)
        started.append(srv)
        _used(request).append(srv)
        srv.start()
        return srv

    try:
        yield start
    finally:
        for srv in started:
            srv.close()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A running tusserver with the default configuration on ``tmp_path/"data"``."""
    return server_factory()


@pytest.fixture(scope="module")
def _module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("shared") / "data") as srv:
        yield srv


@pytest.fixture
def shared_server(request: pytest.FixtureRequest, _module_server: ServerProcess) -> ServerProcess:
    """The module's server (default configuration); never stop it from a test."""
    if not _module_server.running:
        pytest.fail(f"the module's shared server is down\n{_module_server.log()}")
    _used(request).append(_module_server)
    return _module_server
