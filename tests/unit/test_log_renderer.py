"""The plain log renderer prints what structlog's console renderer prints without colours."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import pytest
import structlog

from tusserver.observability import PlainRenderer

CASES: list[dict[str, Any]] = [
    {
        "timestamp": "2026-12-07T18:38:58.941059Z",
        "level": "info",
        "event": "audit",
        "actor": None,
        "detail": {},
        "ip": "127.0.0.1",
        "target": "8dfcd5eadfe4e2d520f2061e0888ba02",
        "request_id": "01d8a40a22c6779f",
    },
    # Strings with a space, a quote, "=" or a line break are quoted; others are bare.
    {"level": "info", "event": "e", "a": "x y", "b": "it's", "c": "k=v", "d": "a\nb", "e": ""},
    {"level": "warning", "event": "an event name longer than the thirty columns", "n": 3},
    {"level": "error", "event": "boom", "exception": "Traceback ...\nValueError: x"},
    {"level": "error", "event": "boom", "stack": "Stack (most recent call last):\n  x"},
    {"level": "error", "event": "boom", "stack": "Stack:\n  x", "exception": "ValueError: x"},
    {"level": "debug", "event": "named", "logger": "tusserver.x", "z": 1.5, "y": [1, "a"]},
    {"level": "critical", "event": 5},
    {"event": "no level, no time"},
    {"timestamp": "T", "level": "info", "event": "", "k": "v"},
]


@pytest.mark.parametrize("event", CASES, ids=range(len(CASES)))
def test_lines_are_the_console_renderers(event: dict[str, Any]) -> None:
    console = structlog.dev.ConsoleRenderer(colors=False)
    with warnings.catch_warnings():
        # (It suggests pretty tracebacks when given a formatted one.)
        warnings.simplefilter("ignore")
        expected = console(None, "info", dict(event))
    assert PlainRenderer()(None, "info", dict(event)) == expected


def test_an_exception_not_yet_formatted_is_printed_with_its_traceback() -> None:
    try:
        raise ValueError("broken on purpose")
    except ValueError as exc:
        line = PlainRenderer()(None, "error", {"level": "error", "event": "x", "exc_info": exc})
    first, _, rest = line.partition("\n")
    assert first == "[error    ] x"
    assert rest.startswith("Traceback (most recent call last):")
    assert rest.endswith("ValueError: broken on purpose")


def test_the_service_logs_plain_lines_when_stderr_is_not_a_terminal() -> None:
    code = (
        "import structlog\n"
        "from tusserver.observability import configure_logging\n"
        "configure_logging(fmt='console', level='info')\n"
        "structlog.get_logger('t').info('upload finished', upload_id='abc', length=4)\n"
        "structlog.get_logger('t').debug('not shown')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    stamp, _, rest = lines[0].partition(" ")
    assert stamp.endswith("Z") and "T" in stamp
    assert rest == "[info     ] upload finished                length=4 upload_id=abc"
    assert "\x1b[" not in out.stderr  # no colour codes
