"""Which listed parts of an S3 multipart upload hold the upload's bytes (no S3 needed)."""

from __future__ import annotations

import datetime as dt

from minio.datatypes import Part

from storage_backends.s3.chunks import _live, _tail_fits

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def part(number: int, size: int = 10, seconds: int = 0, etag: str = "") -> Part:
    return Part(number, etag or f"e{number}", T0 + dt.timedelta(seconds=seconds), size)


def numbers(parts: list[Part]) -> list[int]:
    return [p.part_number for p in parts]


def test_parts_count_up_to_the_first_gap() -> None:
    assert numbers(_live([part(3), part(1), part(2), part(5)])) == [1, 2, 3]
    assert _live([part(2), part(3)]) == []
    assert _live([]) == []


def test_a_part_listed_twice_counts_once_as_its_latest_upload() -> None:
    old, new = part(2, size=10, seconds=1, etag="old"), part(2, size=7, seconds=5, etag="new")
    for listed in ([part(1), old, new], [part(1), new, old]):
        live = _live(listed)
        assert [p.etag for p in live] == ["e1", "new"]
        assert sum(p.size or 0 for p in live) == 17


def test_a_tail_counts_only_where_the_parts_end() -> None:
    assert _tail_fits("1000", 1000)
    assert not _tail_fits("1000", 2000)  # the parts grew past it: stale
    assert _tail_fits(None, 5)  # written before tails recorded their start
