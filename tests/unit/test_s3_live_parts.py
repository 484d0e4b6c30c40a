"""Which listed parts of an S3 multipart upload hold the upload's bytes (no S3 needed)."""

from __future__ import annotations

import datetime as dt

from minio.datatypes import Part

from storage_backends.s3.chunks import FIRST_RUN, Runs, _live, _runs_from

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def part(number: int, size: int = 10, seconds: int = 0, etag: str = "") -> Part:
    return Part(number, etag or f"e{number}", T0 + dt.timedelta(seconds=seconds), size)


def numbers(parts: list[Part]) -> list[int]:
    return [p.part_number for p in parts]


def test_parts_count_up_to_the_first_gap() -> None:
    live, nxt = _live([part(3), part(1), part(2), part(5)], FIRST_RUN)
    assert (numbers(live), nxt) == ([1, 2, 3], 4)


def test_nothing_listed_starts_at_the_open_run() -> None:
    assert _live([], FIRST_RUN) == ([], 1)
    assert _live([part(2)], ((1, 1), (3, None))) == ([], 3)


def test_a_closed_run_ignores_the_parts_stored_after_its_gap() -> None:
    # Part 2 failed, 3 and 4 were stored after it; the run was closed at 2 and the next one
    # opened at 5. Neither 3 and 4 nor a part 2 reaching S3 late ever counts.
    runs: Runs = ((1, 2), (5, None))
    for listed in ([part(1), part(3), part(4), part(5), part(6)], [part(n) for n in range(1, 7)]):
        live, nxt = _live(listed, runs)
        assert (numbers(live), nxt) == ([1, 5, 6], 7)


def test_a_part_listed_twice_counts_once_as_its_latest_upload() -> None:
    old, new = part(2, size=10, seconds=1, etag="old"), part(2, size=7, seconds=5, etag="new")
    for listed in ([part(1), old, new], [part(1), new, old]):
        live, nxt = _live(listed, FIRST_RUN)
        assert [p.etag for p in live] == ["e1", "new"]
        assert (sum(p.size or 0 for p in live), nxt) == (17, 3)


def test_runs_are_read_only_as_this_store_writes_them() -> None:
    assert _runs_from([[1, 3], [7, None]]) == ((1, 3), (7, None))
    for odd in (None, [], [[1, 3]], [[1, None], [4, None]], [[3, 1], [4, None]], [["1", None]]):
        assert _runs_from(odd) is None
