"""Unit tests of ``tusserver.http_util``: Range parsing, safe file names, Content-Disposition."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tusserver.http_util import (
    ByteRange,
    RangeNotSatisfiable,
    content_disposition,
    parse_range,
    safe_filename,
)
from tusserver.protocol.errors import TusError

PROPERTY = settings(database=None, deadline=None, max_examples=300)

# --------------------------------------------------------------------------------------------
# parse_range (RFC 9110 section 14)


def test_byte_range_length() -> None:
    assert ByteRange(0, 0).length == 1
    assert ByteRange(0, 499).length == 500
    assert ByteRange(9500, 9999).length == 500


def test_range_not_satisfiable_is_a_416() -> None:
    assert issubclass(RangeNotSatisfiable, TusError)
    assert RangeNotSatisfiable.status == 416


def test_no_range_header() -> None:
    assert parse_range(None, 10_000) is None
    assert parse_range(None, 0) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # RFC 9110 14.1.2 examples, representation length 10000
        ("bytes=0-499", ByteRange(0, 499)),  # the first 500 bytes
        ("bytes=500-999", ByteRange(500, 999)),  # the second 500 bytes
        ("bytes=-500", ByteRange(9500, 9999)),  # the final 500 bytes
        ("bytes=9500-", ByteRange(9500, 9999)),  # the final 500 bytes
        ("bytes=0-0", ByteRange(0, 0)),  # the first byte
        ("bytes=-1", ByteRange(9999, 9999)),  # the last byte
        ("bytes=0-", ByteRange(0, 9999)),
        ("bytes=9999-", ByteRange(9999, 9999)),
        ("bytes=9999-9999", ByteRange(9999, 9999)),
        ("bytes=0-9999", ByteRange(0, 9999)),
        ("bytes=-10000", ByteRange(0, 9999)),
        # a suffix larger than the representation: the whole of it
        ("bytes=-10001", ByteRange(0, 9999)),
        ("bytes=-99999999", ByteRange(0, 9999)),
        ("bytes=-9999999999999999999", ByteRange(0, 9999)),
        # a last-pos beyond the representation is clamped
        ("bytes=0-10000", ByteRange(0, 9999)),
        ("bytes=9000-20000", ByteRange(9000, 9999)),
        ("bytes=5-9999999999999999999", ByteRange(5, 9999)),
        ("bytes=0000-0001", ByteRange(0, 1)),
        # surrounding whitespace
        (" bytes=0-1 ", ByteRange(0, 1)),
        ("\tbytes=0-1", ByteRange(0, 1)),
    ],
)
def test_range_satisfiable(header: str, expected: ByteRange) -> None:
    assert parse_range(header, 10_000) == expected


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10000-", 10_000),
        ("bytes=10000-10000", 10_000),
        ("bytes=10000-20000", 10_000),
        ("bytes=99999-", 10_000),
        ("bytes=9999999999999999999-", 10_000),
        ("bytes=1-", 1),
        ("bytes=-0", 10_000),  # a suffix-length of 0 is unsatisfiable
        ("bytes=-000", 10_000),
        # a zero-length representation satisfies no range
        ("bytes=0-", 0),
        ("bytes=0-0", 0),
        ("bytes=0-100", 0),
        ("bytes=-1", 0),
        ("bytes=-500", 0),
        ("bytes=-0", 0),
    ],
)
def test_range_not_satisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, size)
    err = info.value
    assert err.status == 416
    assert err.code == "range_not_satisfiable"
    assert err.headers == {"Content-Range": f"bytes */{size}"}


@pytest.mark.parametrize(
    "header",
    [
        # several ranges: the server may ignore Range and send everything
        "bytes=0-0,-1",
        "bytes=0-499,500-999",
        "bytes=500-600,601-999",
        "bytes=500-700,601-999",
        "bytes=0-1, 2-3",
        "bytes=0-1,",
        "bytes=,0-1",
        "bytes=0-0,0-0",
        # other units
        "items=0-1",
        "bits=0-8",
        "pages=1-",
        "none",
        "x-bytes=0-1",
        # malformed
        "",
        " ",
        "bytes",
        "bytes=",
        "bytes=-",
        "bytes= ",
        "bytes 0-1",
        "bytes:0-1",
        "bytes = 0-1",
        "bytes= 0-1",
        "bytes=0 -1",
        "bytes=0- 1",
        "bytes=0-1 ;",
        "bytes=1",
        "bytes=0-1-2",
        "bytes=--1",
        "bytes=a-b",
        "bytes=1-a",
        "bytes=+1-2",
        "bytes=1-+2",
        "bytes=-+1",
        "bytes=-1-",
        "bytes=0x1-2",
        "bytes=1.0-2",
        "bytes=1e2-",
        "bytes=0-1\x00",
        "bytes=0-1\r\nX: y",
        "bytes=99999999999999999999-",  # 20 digits
        "bytes=0-99999999999999999999",
        "bytes=-99999999999999999999",
        "bytes=" + "1" * 10_000 + "-",
        "bytes=²-",  # str.isdigit() but not a decimal digit
    ],
)
@pytest.mark.parametrize("size", [0, 1, 10_000])
def test_range_ignored(header: str, size: int) -> None:
    assert parse_range(header, size) is None


@pytest.mark.parametrize(
    "header", ["bytes=\u0663-", "bytes=0-\u0663", "bytes=-\uff11", "bytes=\u0967-\u0968"]
)
def test_range_non_ascii_digits_ignored(header: str) -> None:
    # a DIGIT of RFC 9110 / RFC 5234 is ASCII 0-9 only; anything else is malformed
    assert parse_range(header, 10_000) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=5-4", 10_000),
        ("bytes=1-0", 10_000),
        ("bytes=9999-0", 10_000),
        ("bytes=5-4", 2),  # invalid wins over unsatisfiable
        ("bytes=5-4", 0),
        ("bytes=20000-10000", 10_000),
    ],
)
def test_range_end_before_start_is_invalid(header: str, size: int) -> None:
    assert parse_range(header, size) is None


@PROPERTY
@given(
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=0, max_value=10**13),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**13)),
)
def test_range_first_last_property(size: int, first: int, last: int | None) -> None:
    header = f"bytes={first}-{'' if last is None else last}"
    if last is not None and last < first:
        assert parse_range(header, size) is None
        return
    if first >= size:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    rng = parse_range(header, size)
    assert rng is not None
    assert rng.start == first
    assert rng.end == min(size - 1, size - 1 if last is None else last)
    assert 0 <= rng.start <= rng.end < size
    assert rng.length == rng.end - rng.start + 1


@PROPERTY
@given(st.integers(min_value=1, max_value=10**12), st.integers(min_value=1, max_value=10**13))
def test_range_suffix_property(size: int, suffix: int) -> None:
    rng = parse_range(f"bytes=-{suffix}", size)
    assert rng is not None
    assert rng.end == size - 1
    assert rng.length == min(suffix, size)


@PROPERTY
@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**6))
def test_range_fuzz(header: str, size: int) -> None:
    try:
        rng = parse_range(header, size)
    except RangeNotSatisfiable as exc:
        assert exc.headers["Content-Range"] == f"bytes */{size}"
        return
    if rng is not None:
        assert re.fullmatch(r"bytes=[0-9]*-[0-9]*", header.strip(), flags=re.ASCII)
        assert 0 <= rng.start <= rng.end < size


# --------------------------------------------------------------------------------------------
# safe_filename

UNSAFE_ASCII = set('"\\/:*?<>|') | {chr(c) for c in range(0x20)} | {"\x7f"}


def assert_safe(name: str, *, limit: int = 200) -> None:
    assert name
    assert len(name) <= limit
    assert not (set(name) & UNSAFE_ASCII), ascii(name)
    assert not any(unicodedata.category(ch) == "Cf" for ch in name), ascii(name)
    assert not name.startswith((".", " ")), ascii(name)
    assert name not in (".", "..")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("My Report (final).pdf", "My Report (final).pdf"),
        ("résumé.pdf", "résumé.pdf"),
        ("日本語.txt", "日本語.txt"),
        ("a b", "a b"),
        ("file.tar.gz", "file.tar.gz"),
        (".bashrc", "bashrc"),
        ("...hidden", "hidden"),
        ("name.", "name"),
        ("name...", "name"),
        ("  padded.txt  ", "padded.txt"),
        (" . name . ", "name"),
        # path separators never survive
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("/etc/passwd", "_etc_passwd"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..\\..\\boot.ini", "_.._boot.ini"),
        ("C:\\Windows\\evil.exe", "C__Windows_evil.exe"),
        ("dir/", "dir_"),
        # characters Windows and shells dislike
        ('a"b', "a_b"),
        ("a*b?c<d>e|f:g", "a_b_c_d_e_f_g"),
        # control characters
        ("a\nb", "a_b"),
        ("a\r\nb", "a__b"),
        ("a\x00b", "a_b"),
        ("a\tb", "a_b"),
        ("a\x1bb", "a_b"),
        ("a\x7fb", "a_b"),
        ("\x00", "_"),
        # bidi overrides and other format characters disappear
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("\u202etxt.exe", "txt.exe"),
        ("a\u202db", "ab"),
        ("a\u2066b\u2069c", "abc"),
        ("a\u200bb", "ab"),
        ("a\u200eb\u200f", "ab"),
        ("\ufeffbom.txt", "bom.txt"),
        ("a\u00adb", "ab"),  # soft hyphen
        # NFC
        ("e\u0301", "\u00e9"),
        ("cafe\u0301.txt", "caf\u00e9.txt"),
        ("A\u030a", "\u00c5"),
        ("\u212b", "\u00c5"),  # angstrom sign
        ("\u1100\u1161", "\uac00"),  # hangul jamo compose
        # dropping a format character must not leave a non-NFC name
        ("e\u200b\u0301", "\u00e9"),
        ("e\u202e\u0301.txt", "\u00e9.txt"),
    ],
)
def test_safe_filename(name: str, expected: str) -> None:
    result = safe_filename(name)
    assert result == expected
    assert_safe(result)
    assert unicodedata.is_normalized("NFC", result)


@pytest.mark.parametrize(
    "name", ["", " ", "  ", ".", "..", "...", ". .", " . ", "\u202e", "\u200b..\u200b", "\ufeff"]
)
def test_safe_filename_fallback(name: str) -> None:
    assert safe_filename(name) == "file"
    assert safe_filename(name, fallback="download.bin") == "download.bin"


@pytest.mark.parametrize("name", ["a\x85b", "a\x9bb", "\x9f.txt"])
def test_safe_filename_drops_c1_controls(name: str) -> None:
    result = safe_filename(name)
    assert not any(unicodedata.category(ch) == "Cc" for ch in result), ascii(result)


def test_safe_filename_long_name_keeps_extension() -> None:
    result = safe_filename("a" * 300 + ".pdf")
    assert len(result) == 200
    assert result == "a" * 196 + ".pdf"


def test_safe_filename_long_name_keeps_last_extension() -> None:
    result = safe_filename("a" * 300 + ".tar.gz")
    assert len(result) == 200
    assert result.endswith(".gz")


def test_safe_filename_long_extension_is_cut() -> None:
    ext = "x" * 17
    result = safe_filename("a" * 300 + "." + ext)
    assert result == "a" * 200


def test_safe_filename_extension_of_16_kept() -> None:
    ext = "x" * 16
    result = safe_filename("a" * 300 + "." + ext)
    assert len(result) == 200
    assert result.endswith("." + ext)


def test_safe_filename_long_name_without_extension() -> None:
    assert safe_filename("b" * 1000) == "b" * 200


def test_safe_filename_at_limit_untouched() -> None:
    name = "a" * 196 + ".pdf"
    assert safe_filename(name) == name


def test_safe_filename_custom_limit() -> None:
    assert safe_filename("abcdefghij.txt", limit=10) == "abcdef.txt"
    assert safe_filename("abcdefghijkl", limit=10) == "abcdefghij"


def test_safe_filename_long_non_ascii_keeps_extension() -> None:
    result = safe_filename("ж" * 500 + ".docx")
    assert len(result) == 200
    assert result.endswith(".docx")


@pytest.mark.parametrize(
    "name",
    [
        "a" * 199 + " " + "b" * 10,  # cut right after a space
        "a" * 199 + "." + "b" * 20,  # cut right after a dot (extension too long to keep)
        "a" * 198 + " ." + "b" * 30,
    ],
)
def test_safe_filename_truncation_leaves_no_trailing_dot_or_space(name: str) -> None:
    result = safe_filename(name)
    assert_safe(result)
    assert not result.endswith((" ", ".")), repr(result[-5:])
    assert safe_filename(result) == result


@PROPERTY
@given(st.text(max_size=400))
@example("../../etc/passwd")
@example("\u202e")
def test_safe_filename_property(name: str) -> None:
    assert_safe(safe_filename(name))


@PROPERTY
@given(st.text(max_size=60), st.integers(min_value=30, max_value=300))
def test_safe_filename_property_limit(name: str, limit: int) -> None:
    assert_safe(safe_filename(name, limit=limit), limit=limit)


# --------------------------------------------------------------------------------------------
# content_disposition


@pytest.mark.parametrize(
    ("name", "inline", "expected"),
    [
        (None, False, "attachment"),
        ("", False, "attachment"),
        (None, True, "inline"),
        ("", True, "inline"),
        ("report.pdf", False, 'attachment; filename="report.pdf"'),
        ("report.pdf", True, 'inline; filename="report.pdf"'),
        ("a b.txt", False, 'attachment; filename="a b.txt"'),
        ("100%.txt", False, 'attachment; filename="100%.txt"'),
        ("..", False, 'attachment; filename="file"'),
        ("../x.txt", False, 'attachment; filename="_x.txt"'),
        (
            "résumé.pdf",
            False,
            "attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
        ),
        (
            "日本.txt",
            True,
            "inline; filename=\"__.txt\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
        ),
        (
            "a b€.txt",
            False,
            "attachment; filename=\"a b_.txt\"; filename*=UTF-8''a%20b%E2%82%AC.txt",
        ),
        (
            "😀.png",
            False,
            "attachment; filename=\"_.png\"; filename*=UTF-8''%F0%9F%98%80.png",
        ),
    ],
)
def test_content_disposition(name: str | None, inline: bool, expected: str) -> None:
    assert content_disposition(name, inline=inline) == expected


@pytest.mark.parametrize(
    "name",
    [
        'a"b.txt',
        'x.txt"; filename="evil.exe',
        "a\\b.txt",
        'a\\"b',
        "a\r\nSet-Cookie: x=1",
        "a\nb",
        "a\rb",
        "a\x00b",
        "\u202eexe.txt",
        'é"\r\n\\.txt',
        "a\x85b",
        "a\u2028b",
        "a\u2029b",
        "%0d%0a",
    ],
)
def test_content_disposition_no_raw_specials(name: str) -> None:
    header = content_disposition(name)
    assert_header_safe(header)
    ascii_name, extended = split_disposition(header, "attachment")
    assert ascii_name == safe_filename(name).encode("ascii", "replace").decode().replace("?", "_")
    if extended is not None:
        assert unquote(extended, errors="strict") == safe_filename(name)


def assert_header_safe(header: str) -> None:
    assert header.isascii(), ascii(header)
    assert not any(ch in header for ch in "\r\n\x00\\"), ascii(header)
    assert all(0x20 <= ord(ch) < 0x7F for ch in header), ascii(header)
    # the only double quotes are the two around the ASCII filename
    assert header.count('"') in (0, 2)


def split_disposition(header: str, kind: str) -> tuple[str, str | None]:
    """(filename, filename* value or None) of a header with exactly these parameters."""
    m = re.fullmatch(
        kind + r"""; filename="([^"]*)"(?:; filename\*=UTF-8''([A-Za-z0-9%._~-]+))?""", header
    )
    assert m, header
    return m.group(1), m.group(2)


@PROPERTY
@given(st.text(max_size=300), st.booleans())
@example('a"b\r\n\\c.txt', False)
@example("\u202egpj.exe", True)
def test_content_disposition_property(name: str, inline: bool) -> None:
    header = content_disposition(name, inline=inline)
    assert_header_safe(header)
    kind = "inline" if inline else "attachment"
    if not name:
        assert header == kind
        return
    clean = safe_filename(name)
    ascii_name, extended = split_disposition(header, kind)
    if clean.isascii():
        assert extended is None
        assert ascii_name == clean
    else:
        assert extended is not None
        assert unquote(extended, errors="strict") == clean
        assert len(ascii_name) == len(clean)
