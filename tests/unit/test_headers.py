"""Unit tests of ``tusserver.protocol.headers``: pure parsing and formatting, no I/O.

Every parse failure must be a :class:`BadRequest` (400) whose message names the header.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from tusserver.errors import RepeatedHeader
from tusserver.protocol.errors import BadRequest, TusError
from tusserver.protocol.headers import (
    DIGEST_FIELDS,
    MAX_INT,
    MAX_METADATA_CHARS,
    SINGLE_HEADERS,
    SUPPORTED_CHECKSUMS,
    TUS_VERSION,
    Checksum,
    ConcatFinal,
    ConcatPartial,
    format_http_date,
    format_metadata,
    is_valid_upload_id,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_metadata,
    parse_non_negative_int,
    refuse_repeated,
    upload_id_from_url,
)

# No example database on disk, no timing flakiness on a loaded machine.
PROPERTY = settings(database=None, deadline=None, max_examples=300)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def assert_bad_request(fn: Callable[..., Any], *args: Any, header: str) -> BadRequest:
    """``fn(*args)`` raises BadRequest (400) whose message names ``header``."""
    with pytest.raises(BadRequest) as info:
        fn(*args)
    err = info.value
    assert err.status == 400
    assert err.code == "bad_request"
    assert header in err.message
    assert str(err) == err.message
    # a hostile value is quoted shortened, never echoed in full
    assert len(err.message) < 300
    return err


def test_constants() -> None:
    assert TUS_VERSION == "1.0.0"
    assert MAX_INT == 2**63 - 1
    assert SUPPORTED_CHECKSUMS == ("sha1", "md5", "sha256", "sha512")
    assert all(alg == alg.lower() for alg in SUPPORTED_CHECKSUMS)
    assert issubclass(BadRequest, TusError)


# --------------------------------------------------------------------------------------------
# parse_non_negative_int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("1", 1),
        ("42", 42),
        ("00", 0),
        ("007", 7),
        ("0000000000000000001", 1),  # 19 digits
        (" 5", 5),
        ("5 ", 5),
        ("  123  ", 123),
        ("\t9\t", 9),
        ("1000000", 1_000_000),
        (str(2**31), 2**31),
        (str(2**32), 2**32),
        ("9223372036854775807", MAX_INT),
        ("1" * 19, int("1" * 19)),
    ],
)
def test_non_negative_int_valid(value: str, expected: int) -> None:
    assert parse_non_negative_int(value, "Upload-Offset") == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "\t",
        "-1",
        "-0",
        "- 1",
        "+5",
        "+0",
        "1e3",
        "1E3",
        "0x10",
        "0o7",
        "0b1",
        "1.0",
        "1.",
        ".5",
        "1,000",
        "1_000",
        "1 000",
        "12a",
        "a12",
        "abc",
        "NaN",
        "inf",
        "\uff15",  # fullwidth digit five
        "\u0663",  # arabic-indic digit three
        "\u0967\u0968",  # devanagari digits
        "²",  # superscript two: str.isdigit() is True
        "1\u0663",
        "\uff110",
        "5\x00",
        "\x005",
        "1\n2",
        "10000000000000000000",  # 20 digits
        "00000000000000000001",  # 20 digits, even if small
        "99999999999999999999",
        "9" * 1000,
        "1" * 100_000,
    ],
)
@pytest.mark.parametrize("header", ["Upload-Offset", "Upload-Length"])
def test_non_negative_int_invalid(value: str, header: str) -> None:
    err = assert_bad_request(parse_non_negative_int, value, header, header=header)
    assert "non-negative integer" in err.message


@pytest.mark.parametrize("value", [str(2**63), "9223372036854775808", "9999999999999999999"])
def test_non_negative_int_too_large(value: str) -> None:
    err = assert_bad_request(parse_non_negative_int, value, "Upload-Length", header="Upload-Length")
    assert "too large" in err.message


def test_non_negative_int_error_quotes_value_shortened() -> None:
    err = assert_bad_request(
        parse_non_negative_int, "x" * 5000, "Upload-Offset", header="Upload-Offset"
    )
    assert "x" * 64 in err.message
    assert "x" * 65 not in err.message
    assert "..." in err.message


def test_non_negative_int_error_escapes_controls() -> None:
    err = assert_bad_request(
        parse_non_negative_int, "1\r\nX-Evil: 1", "Upload-Offset", header="Upload-Offset"
    )
    assert "\r" not in err.message
    assert "\n" not in err.message


@PROPERTY
@given(st.integers(min_value=0, max_value=MAX_INT))
def test_non_negative_int_round_trip(n: int) -> None:
    assert parse_non_negative_int(str(n), "Upload-Offset") == n


@PROPERTY
@given(st.integers(min_value=MAX_INT + 1, max_value=10**19 - 1))
def test_non_negative_int_above_max_rejected(n: int) -> None:
    assert_bad_request(parse_non_negative_int, str(n), "Upload-Length", header="Upload-Length")


@PROPERTY
@given(st.integers(max_value=-1))
def test_non_negative_int_negative_rejected(n: int) -> None:
    assert_bad_request(parse_non_negative_int, str(n), "Upload-Offset", header="Upload-Offset")


@PROPERTY
@given(st.text())
@example("")
@example("\u0663")
def test_non_negative_int_only_ascii_digits_accepted(value: str) -> None:
    try:
        n = parse_non_negative_int(value, "Upload-Offset")
    except BadRequest as exc:
        assert "Upload-Offset" in exc.message
        return
    stripped = value.strip()
    assert re.fullmatch(r"[0-9]+", stripped, flags=re.ASCII)
    assert 0 <= n <= MAX_INT
    assert n == int(stripped)


# --------------------------------------------------------------------------------------------
# parse_defer_length


@pytest.mark.parametrize("value", ["1", " 1", "1 ", "\t1\t"])
def test_defer_length_valid(value: str) -> None:
    assert parse_defer_length(value) is True


@pytest.mark.parametrize(
    "value",
    ["", " ", "0", "2", "01", "1.0", "+1", "-1", "true", "yes", "\uff11", "\u0661", "11", "1 1"],
)
def test_defer_length_invalid(value: str) -> None:
    assert_bad_request(parse_defer_length, value, header="Upload-Defer-Length")


# --------------------------------------------------------------------------------------------
# parse_metadata / format_metadata


@pytest.mark.parametrize("value", ["", " ", "   ", "\t"])
def test_metadata_empty(value: str) -> None:
    assert parse_metadata(value) == {}


def test_metadata_spec_example() -> None:
    # the example of the creation extension in the tus 1.0.0 protocol
    header = "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"
    assert parse_metadata(header) == {
        "filename": b"world_domination_plan.pdf",
        "is_confidential": None,
    }


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a", {"a": None}),
        ("a ", {"a": None}),  # the separating space MAY be present without a value
        ("a\t", {"a": None}),
        ("a,b", {"a": None, "b": None}),
        ("a YQ==", {"a": b"a"}),
        ("a YWI=", {"a": b"ab"}),
        ("a YWJj", {"a": b"abc"}),
        (" a YQ== , b Yg== ", {"a": b"a", "b": b"b"}),
        ("\ta YQ==\t,\tb\t", {"a": b"a", "b": None}),
        ("a YQ==,b", {"a": b"a", "b": None}),
        # keys may hold any visible ASCII except the separators
        ("a=b YQ==", {"a=b": b"a"}),
        ("k;x YQ==", {"k;x": b"a"}),
        ("!\"#$%&'()*+-./:;<=>?@[\\]^_`{|}~ YQ==", {"!\"#$%&'()*+-./:;<=>?@[\\]^_`{|}~": b"a"}),
        ("Content-Type aW1hZ2UvcG5n", {"Content-Type": b"image/png"}),
        ("A YQ==,a Yg==", {"A": b"a", "a": b"b"}),  # keys are case-sensitive
    ],
)
def test_metadata_valid(header: str, expected: dict[str, bytes | None]) -> None:
    assert parse_metadata(header) == expected


def test_metadata_preserves_order() -> None:
    keys = [f"k{i}" for i in range(50)][::-1]
    parsed = parse_metadata(",".join(keys))
    assert list(parsed) == keys


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00",
        b"\x00\x00\x00",
        b"a\x00b",
        b"\xff",
        b"\xff\xfe\xfd",
        b"\xc3\x28",  # invalid UTF-8
        b"\xed\xa0\x80",  # UTF-8 encoded surrogate: invalid
        b"\x80",
        "é".encode(),
        "日本語.txt".encode(),
        "é".encode("latin-1"),
        b"\r\n",
        b" , ",
        bytes(range(256)),
        b"x" * 6_000,
    ],
)
def test_metadata_binary_values_byte_exact(raw: bytes) -> None:
    parsed = parse_metadata(f"filename {b64(raw)},other")
    assert parsed == {"filename": raw, "other": None}
    assert type(parsed["filename"]) is bytes


def test_metadata_exactly_128_pairs_accepted() -> None:
    header = ",".join(f"k{i} {b64(str(i).encode())}" for i in range(128))
    parsed = parse_metadata(header)
    assert len(parsed) == 128
    assert parsed["k127"] == b"127"


def test_metadata_up_to_its_bound_is_accepted() -> None:
    header = "key " + "A" * (MAX_METADATA_CHARS - 4)
    assert len(header) == MAX_METADATA_CHARS
    assert len(parse_metadata(header)["key"] or b"") == (MAX_METADATA_CHARS - 4) // 4 * 3


@pytest.mark.parametrize("extra", [4, 100, 56 * 1024])
def test_metadata_past_its_bound_is_refused(extra: int) -> None:
    """Metadata is held outside the storage quota: bounded, whatever the header allows."""
    header = "key " + "A" * (MAX_METADATA_CHARS - 4 + extra)
    err = assert_bad_request(parse_metadata, header, header="Upload-Metadata")
    assert str(MAX_METADATA_CHARS) in err.message


@pytest.mark.parametrize("count", [129, 200, 10_000])
def test_metadata_too_many_pairs(count: int) -> None:
    header = ",".join(f"k{i}" for i in range(count))
    err = assert_bad_request(parse_metadata, header, header="Upload-Metadata")
    assert "128" in err.message


@pytest.mark.parametrize(
    "header",
    ["a,a", "a YQ==,a Yg==", "a,a YQ==", "a YQ==,a", "x,a,b,a", "a YQ==, a YQ=="],
)
def test_metadata_duplicate_keys(header: str) -> None:
    err = assert_bad_request(parse_metadata, header, header="Upload-Metadata")
    assert "twice" in err.message


@pytest.mark.parametrize(
    "header",
    ["a YQ==,,b", ",a", "a,", "a YQ==,", ",", ",,", " , ", "a, ,b", "a,\t,b"],
)
def test_metadata_empty_pair(header: str) -> None:
    err = assert_bad_request(parse_metadata, header, header="Upload-Metadata")
    assert "empty pair" in err.message


@pytest.mark.parametrize(
    "header",
    [
        "a !!!!",
        "a YQ",  # missing padding
        "a YQ=",  # incomplete padding
        "a YWI",  # missing padding
        "a Y",  # impossible length
        "a YQ===",  # too much padding
        "a =YQ=",
        "a ==",
        "a =",
        "a YQ==YQ==",  # padding in the middle
        "a YQ==\n",
        "a -_8=",  # url-safe alphabet is not the base64 of the spec
        "a _w==",
        "a -w==",
        "a YQ==-",
        "a aGVsbG8*",
        "a aGVs\x00bG8=",
        "a aGVsbG8=\r",
        "a \uff15Q==",
        "a é===",
    ],
)
def test_metadata_bad_base64(header: str) -> None:
    err = assert_bad_request(parse_metadata, header, header="Upload-Metadata")
    assert "base64" in err.message
    assert "'a'" in err.message  # names the key


@pytest.mark.parametrize(
    "header",
    [
        "é YQ==",  # non-ASCII key
        "ключ",
        "k\x00 YQ==",
        "k\x7f",
        "k\x01",
        "a\tYQ==",  # tab is not the separator
        "a\x0bYQ==",
        "a\u00a0",
        "a\u2003YQ==",
    ],
)
def test_metadata_invalid_key(header: str) -> None:
    err = assert_bad_request(parse_metadata, header, header="Upload-Metadata")
    assert "key" in err.message


@pytest.mark.parametrize(
    "header",
    ["a b c", "a  YQ==", "a YQ== extra", "a YQ== ,b c d", "my key YQ=="],
)
def test_metadata_more_than_one_space(header: str) -> None:
    err = assert_bad_request(parse_metadata, header, header="Upload-Metadata")
    assert "space" in err.message


def test_metadata_error_shortens_huge_key() -> None:
    err = assert_bad_request(parse_metadata, "é" * 10_000, header="Upload-Metadata")
    assert "é" * 65 not in err.message


@pytest.mark.parametrize(
    ("metadata", "header"),
    [
        ({}, ""),
        ({"a": None}, "a"),
        ({"a": b"a"}, "a YQ=="),
        ({"a": None, "b": b"hi"}, "a,b aGk="),
        ({"b": b"hi", "a": None}, "b aGk=,a"),
        ({"n": b"\x00\xff"}, "n AP8="),
        ({"e": b""}, "e "),
    ],
)
def test_format_metadata_exact(metadata: dict[str, bytes | None], header: str) -> None:
    assert format_metadata(metadata) == header


def test_format_metadata_uses_standard_alphabet() -> None:
    # b"\xfb\xff" is '-_8=' url-safe but '+/8=' standard
    assert format_metadata({"k": b"\xfb\xff"}) == "k +/8="


def test_empty_value_round_trips_as_no_value() -> None:
    # "The value MAY be empty. In these cases, the space [...] MAY be left out."
    assert parse_metadata(format_metadata({"e": b""})) == {"e": None}


META_KEY = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=40,
)
META_VALUE = st.one_of(st.none(), st.binary(min_size=1, max_size=300))


@PROPERTY
@given(st.dictionaries(META_KEY, META_VALUE, max_size=128))
def test_metadata_round_trip(metadata: dict[str, bytes | None]) -> None:
    header = format_metadata(metadata)
    parsed = parse_metadata(header)
    assert parsed == metadata
    assert list(parsed) == list(metadata)
    assert format_metadata(parsed) == header


@PROPERTY
@given(st.dictionaries(META_KEY, st.one_of(st.none(), st.binary(max_size=50)), max_size=20))
def test_metadata_round_trip_empty_values_become_none(metadata: dict[str, bytes | None]) -> None:
    expected = {k: (v or None) for k, v in metadata.items()}
    assert parse_metadata(format_metadata(metadata)) == expected


@PROPERTY
@given(st.text(max_size=300))
@example("a YQ==,,b")
@example("\x00")
def test_metadata_fuzz_only_bad_request(header: str) -> None:
    try:
        parsed = parse_metadata(header)
    except BadRequest as exc:
        assert "Upload-Metadata" in exc.message
        return
    assert len(parsed) <= 128
    for key, val in parsed.items():
        assert key.isascii()
        assert " " not in key and "," not in key
        assert val is None or isinstance(val, bytes)


# --------------------------------------------------------------------------------------------
# parse_concat / upload_id_from_url

BASE = "/uploads/"


@pytest.mark.parametrize("value", ["partial", " partial", "partial ", "\tpartial\t"])
def test_concat_partial(value: str) -> None:
    assert parse_concat(value, BASE) == ConcatPartial()


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("final;/uploads/a", ("a",)),
        ("final;/uploads/a /uploads/b", ("a", "b")),
        ("final;/uploads/b /uploads/a", ("b", "a")),  # order is kept
        ("final; /uploads/a /uploads/b", ("a", "b")),
        ("final;/uploads/a  /uploads/b", ("a", "b")),
        ("final;/uploads/a\t/uploads/b", ("a", "b")),
        (" final;/uploads/a /uploads/b ", ("a", "b")),
        ("final;/uploads/a /uploads/b\t", ("a", "b")),
        ("final;http://example.com/uploads/abc", ("abc",)),
        ("final;https://example.com:8443/uploads/abc", ("abc",)),
        ("final;http://127.0.0.1:1080/uploads/x-y_Z9", ("x-y_Z9",)),
        ("final;http://[::1]:1080/uploads/abc", ("abc",)),
        ("final;http://user:pw@example.com/uploads/abc", ("abc",)),
        ("final;http://example.com/uploads/a /uploads/b", ("a", "b")),  # mixed
        ("final;/uploads/abc?x=1", ("abc",)),
        ("final;/uploads/abc?", ("abc",)),
        ("final;/uploads/abc#frag", ("abc",)),
        ("final;/uploads/abc?x=/uploads/zzz", ("abc",)),
        ("final;http://example.com/uploads/abc?token=1&b=2", ("abc",)),
        ("final;/uploads/" + "a" * 64, ("a" * 64,)),
        ("final;/uploads/a /uploads/a", ("a", "a")),
    ],
)
def test_concat_final(value: str, ids: tuple[str, ...]) -> None:
    result = parse_concat(value, BASE)
    assert isinstance(result, ConcatFinal)
    assert result.upload_ids == ids


@pytest.mark.parametrize("base_path", ["/uploads/", "/uploads"])
def test_concat_base_path_with_or_without_trailing_slash(base_path: str) -> None:
    assert parse_concat("final;/uploads/a", base_path) == ConcatFinal(("a",))


def test_concat_other_base_path() -> None:
    assert parse_concat("final;/api/v1/files/a", "/api/v1/files/") == ConcatFinal(("a",))
    assert_bad_request(parse_concat, "final;/uploads/a", "/api/v1/files/", header="Upload-Concat")


def test_concat_root_base_path() -> None:
    assert parse_concat("final;/abc http://h/def", "/") == ConcatFinal(("abc", "def"))


def test_concat_1000_urls_accepted_1001_rejected() -> None:
    urls = " ".join(f"/uploads/u{i}" for i in range(1000))
    result = parse_concat("final;" + urls, BASE)
    assert isinstance(result, ConcatFinal)
    assert len(result.upload_ids) == 1000
    assert_bad_request(parse_concat, f"final;{urls} /uploads/x", BASE, header="Upload-Concat")


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "Partial",
        "PARTIAL",
        "partial;",
        "partial /uploads/a",
        "final",
        "final;",
        "final;   ",
        "final;\t",
        "final:/uploads/a",
        "final ;/uploads/a",
        "FINAL;/uploads/a",
        "Final;/uploads/a",
        "finally;/uploads/a",
        "/uploads/a",
        "final,/uploads/a",
    ],
)
def test_concat_malformed(value: str) -> None:
    assert_bad_request(parse_concat, value, BASE, header="Upload-Concat")


BAD_CONCAT_URLS = [
    "/files/a",
    "http://example.com/files/a",
    "uploads/a",  # relative without leading slash
    "a",
    "/uploadsX/a",
    "/upload/a",
    "/UPLOADS/a",
    "/uploads",
    "/uploads/",
    "/uploads/?a",
    "/uploads/#a",
    "/uploads//a",
    "/uploads/a/",
    "/uploads/a/b",
    "/uploads/a/../b",
    "/uploads/../etc",
    "/uploads/../etc/passwd",
    "/uploads/..",
    "/uploads/.",
    "/uploads/..%2fetc",
    "/uploads/%2e%2e",
    "/uploads/%2E%2E/etc",
    "/uploads/a%20b",
    "/uploads/a%00",
    "/uploads/a b",
    "/uploads/a.b",
    "/uploads/a;b",
    "/uploads/a\\b",
    "/uploads/é",
    "/uploads/\uff41",
    "/uploads/" + "a" * 65,
    "../etc",
    "../uploads/a",
    "%2e%2e",
    "http://example.com",
    "http://example.com/",
    "http://example.com/uploads",
    "http://example.com/x/uploads/a",
    "http:///uploads/../a",
    "file:///etc/passwd",
    # the path of these URLs is empty: /uploads/abc is in the query or the fragment
    "http://example.com?/uploads/abc",
    "http://example.com#/uploads/abc",
    "https://example.com:8443?x=/uploads/abc",
]


@pytest.mark.parametrize("url", BAD_CONCAT_URLS)
def test_concat_url_not_ours(url: str) -> None:
    assert_bad_request(parse_concat, f"final;{url}", BASE, header="Upload-Concat")
    assert_bad_request(parse_concat, f"final;/uploads/ok {url}", BASE, header="Upload-Concat")
    assert_bad_request(upload_id_from_url, url, BASE, header="Upload-Concat")


@pytest.mark.parametrize(
    ("url", "upload_id"),
    [
        ("/uploads/abc", "abc"),
        ("/uploads/ABC-def_123", "ABC-def_123"),
        ("http://h/uploads/abc", "abc"),
        ("https://h:1/uploads/abc?x#y", "abc"),
        ("/uploads/abc#x?y", "abc"),
    ],
)
def test_upload_id_from_url(url: str, upload_id: str) -> None:
    assert upload_id_from_url(url, BASE) == upload_id


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a", True),
        ("A-z_0", True),
        ("a" * 64, True),
        ("", False),
        ("a" * 65, False),
        ("a.b", False),
        ("..", False),
        ("a/b", False),
        ("é", False),
        ("\u0663", False),
        ("a\n", False),
    ],
)
def test_is_valid_upload_id(value: str, ok: bool) -> None:
    assert is_valid_upload_id(value) is ok


UPLOAD_ID = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=64,
)


@PROPERTY
@given(
    st.lists(UPLOAD_ID, min_size=1, max_size=20),
    st.sampled_from(["", "http://example.com", "https://h:8443"]),
    st.sampled_from(["", "?x=1", "#f"]),
)
def test_concat_final_property(ids: list[str], origin: str, suffix: str) -> None:
    header = "final;" + " ".join(f"{origin}/uploads/{i}{suffix}" for i in ids)
    assert parse_concat(header, BASE) == ConcatFinal(tuple(ids))


@PROPERTY
@given(st.text(max_size=200))
def test_concat_fuzz_only_bad_request(value: str) -> None:
    try:
        result = parse_concat(value, BASE)
    except BadRequest as exc:
        assert "Upload-Concat" in exc.message
        return
    if isinstance(result, ConcatFinal):
        assert result.upload_ids
        assert all(is_valid_upload_id(i) for i in result.upload_ids)


# --------------------------------------------------------------------------------------------
# parse_checksum

PAYLOAD = b"hello tus"


@pytest.mark.parametrize("algorithm", SUPPORTED_CHECKSUMS)
def test_checksum_each_supported_algorithm(algorithm: str) -> None:
    digest = hashlib.new(algorithm, PAYLOAD).digest()
    result = parse_checksum(f"{algorithm} {b64(digest)}")
    assert result == Checksum(algorithm, digest)
    assert result.digest == digest


@pytest.mark.parametrize(
    "value",
    [
        f" sha1 {b64(b'x' * 20)}",
        f"sha1 {b64(b'x' * 20)} ",
        f"\tsha1 {b64(b'x' * 20)}\t",
    ],
)
def test_checksum_surrounding_whitespace(value: str) -> None:
    assert parse_checksum(value) == Checksum("sha1", b"x" * 20)


def test_checksum_spec_example() -> None:
    # "Upload-Checksum: sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="
    result = parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")
    assert result.algorithm == "sha1"
    assert result.digest == base64.b64decode("Kq5sNclPz7QV2+lfQIuc6R7oRu0=")


@pytest.mark.parametrize(
    "algorithm",
    [
        "SHA1",
        "Sha1",
        "MD5",
        "SHA256",
        "sha-1",
        "sha-256",
        "crc32",
        "md4",
        "sha3_256",
        "sha224",
        "blake2b",
        "sha384",
        "sha512_256",
        "é",
        "sha1\x00",
    ],
)
def test_checksum_unsupported_algorithm(algorithm: str) -> None:
    err = assert_bad_request(
        parse_checksum, f"{algorithm} {b64(b'x' * 20)}", header="Upload-Checksum"
    )
    assert "not supported" in err.message
    assert repr(algorithm) in err.message
    for alg in SUPPORTED_CHECKSUMS:
        assert alg in err.message  # the message lists what is supported


def test_checksum_unsupported_algorithm_checked_before_digest() -> None:
    err = assert_bad_request(parse_checksum, "crc32 !!!!", header="Upload-Checksum")
    assert "not supported" in err.message


@pytest.mark.parametrize(
    "digest",
    [
        "!!!!",
        "YQ",
        "YQ=",
        "Y",
        "YQ===",
        "YQ==YQ==",
        "-_8=",
        "_w==",
        "Kq5sNclPz7QV2-lfQIuc6R7oRu0=",
        "==",
        "=",
        "\uff15Q==",
    ],
)
def test_checksum_bad_base64(digest: str) -> None:
    err = assert_bad_request(parse_checksum, f"sha1 {digest}", header="Upload-Checksum")
    assert "base64" in err.message


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "sha1",
        "sha1 ",
        " sha1",
        "Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        "sha1  Kq5sNclPz7QV2+lfQIuc6R7oRu0=",  # two spaces
        "sha1\tKq5sNclPz7QV2+lfQIuc6R7oRu0=",  # tab is not the separator
        "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0= extra",
        "sha1 Kq5sNclPz7QV2 +lfQIuc6R7oRu0=",
        "sha1,Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        "sha1:Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        " Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
    ],
)
def test_checksum_malformed(value: str) -> None:
    assert_bad_request(parse_checksum, value, header="Upload-Checksum")


@PROPERTY
@given(st.sampled_from(SUPPORTED_CHECKSUMS), st.binary(min_size=1, max_size=64))
def test_checksum_round_trip(algorithm: str, digest: bytes) -> None:
    assert parse_checksum(f"{algorithm} {b64(digest)}") == Checksum(algorithm, digest)


@PROPERTY
@given(st.text(max_size=100))
def test_checksum_fuzz_only_bad_request(value: str) -> None:
    try:
        result = parse_checksum(value)
    except BadRequest as exc:
        assert "Upload-Checksum" in exc.message
        return
    assert result.algorithm in SUPPORTED_CHECKSUMS
    assert isinstance(result.digest, bytes)


# --------------------------------------------------------------------------------------------
# format_http_date

IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(1994, 11, 6, 8, 49, 37, tzinfo=dt.UTC),
        dt.datetime(1994, 11, 6, 8, 49, 37),  # naive: UTC
        dt.datetime(1994, 11, 6, 8, 49, 37, 999_999, tzinfo=dt.UTC),  # fraction dropped
        dt.datetime(1994, 11, 6, 10, 49, 37, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(1994, 11, 6, 3, 49, 37, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
        dt.datetime(1994, 11, 6, 14, 19, 37, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(1994, 11, 7, 0, 49, 37, tzinfo=dt.timezone(dt.timedelta(hours=16))),
        dt.datetime(1994, 11, 5, 23, 49, 37, tzinfo=dt.timezone(dt.timedelta(hours=-9))),
    ],
)
def test_http_date_rfc_example(when: dt.datetime) -> None:
    assert format_http_date(when) == "Sun, 06 Nov 1994 08:49:37 GMT"


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (dt.datetime(2000, 1, 1), "Sat, 01 Jan 2000 00:00:00 GMT"),
        (dt.datetime(2024, 2, 29, 23, 59, 59), "Thu, 29 Feb 2024 23:59:59 GMT"),
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), "Thu, 01 Jan 1970 00:00:00 GMT"),
        (
            dt.datetime(2023, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-1))),
            "Mon, 01 Jan 2024 00:30:00 GMT",
        ),
        (dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), "Fri, 31 Dec 9999 23:59:59 GMT"),
    ],
)
def test_http_date_exact(when: dt.datetime, expected: str) -> None:
    assert format_http_date(when) == expected


def test_http_date_does_not_mutate_naive_input() -> None:
    when = dt.datetime(2020, 5, 17, 12, 0, 0)
    format_http_date(when)
    assert when.tzinfo is None


@PROPERTY
@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.one_of(
            st.none(),
            st.just(dt.UTC),
            st.integers(min_value=-23 * 60, max_value=23 * 60).map(
                lambda m: dt.timezone(dt.timedelta(minutes=m))
            ),
        ),
    )
)
def test_http_date_property(when: dt.datetime) -> None:
    text = format_http_date(when)
    assert IMF_FIXDATE.fullmatch(text), text
    aware = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
    back = email.utils.parsedate_to_datetime(text)
    assert back == aware.replace(microsecond=0)
    assert back.tzinfo is not None and back.utcoffset() == dt.timedelta(0)


# --- headers a request carries once ---------------------------------------------------------

#: A valid value of every single header (what a client sends once).
ONE_VALUE = {
    "Tus-Resumable": "1.0.0",
    "Upload-Offset": "5",
    "Upload-Length": "10",
    "Upload-Defer-Length": "1",
    "Upload-Metadata": "filename YS50eHQ=,filetype dGV4dC9wbGFpbg==",
    "Upload-Checksum": "sha1 " + b64(hashlib.sha1(b"x").digest()),
    "Upload-Concat": "final;/uploads/a /uploads/b",
    "X-HTTP-Method-Override": "PATCH",
    "Upload-Draft-Interop-Version": "8",
    "Upload-Complete": "?1",
    "Upload-Incomplete": "?0",
}


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def assert_repeated(found: CIMultiDict[str], header: str) -> RepeatedHeader:
    with pytest.raises(RepeatedHeader) as info:
        refuse_repeated(found)
    err = info.value
    assert isinstance(err, BadRequest)
    assert (err.status, err.code, err.header) == (400, "repeated_header", header)
    assert header in err.message and "once" in err.message
    return err


def test_the_single_headers_are_all_listed() -> None:
    assert set(ONE_VALUE) == set(SINGLE_HEADERS)
    assert set(DIGEST_FIELDS) == {"Content-Digest", "Repr-Digest"}


def test_each_single_header_once_is_fine() -> None:
    refuse_repeated(headers(*ONE_VALUE.items()))
    refuse_repeated(headers())
    refuse_repeated(headers(("Accept", "a"), ("Accept", "b"), ("Via", "1.1 a"), ("Via", "1.1 b")))


@pytest.mark.parametrize("header", SINGLE_HEADERS)
@pytest.mark.parametrize("same", [True, False])
def test_a_single_header_twice_is_refused(header: str, same: bool) -> None:
    """Two lines, with the same value or not, in any spelling of the name."""
    value = ONE_VALUE[header]
    other = value if same else "7"
    assert_repeated(headers((header, value), (header.lower(), other)), header)
    assert_repeated(headers((header, value), ("Accept", "x"), (header.upper(), other)), header)


@pytest.mark.parametrize(
    "header",
    [
        "Upload-Offset",
        "Upload-Length",
        "Upload-Defer-Length",
        "Upload-Draft-Interop-Version",
        "Upload-Complete",
        "Upload-Incomplete",
    ],
)
@pytest.mark.parametrize("value", ["5, 6", "5,6", "1, 1", "?1, ?0", "5 ,6", "5, ", "5,,6", "x,y"])
def test_several_values_in_one_line_of_a_number_or_boolean_are_refused(
    header: str, value: str
) -> None:
    """What a client or a proxy that merges repeated lines sends (RFC 9110 section 5.3)."""
    assert_repeated(headers((header, value)), header)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        # A comma inside one member (a string parameter) separates nothing.
        ("Upload-Length", '5;note="a,b"'),
        ("Upload-Complete", '?1;note=","'),
        # Values with commas of their own: checked by their parsers, not here.
        ("Upload-Metadata", "a YQ==,b Yg==,c"),
        ("Tus-Resumable", "1.0.0, 1.0.0"),  # an unsupported version: 412, as the spec says
        # Malformed but single: the field's parser says what is wrong with it.
        ("Upload-Offset", "-5"),
        ("Upload-Complete", "yes"),
    ],
)
def test_one_value_with_or_without_commas_is_left_to_the_parsers(header: str, value: str) -> None:
    refuse_repeated(headers((header, value)))


@pytest.mark.parametrize("field", ["Content-Digest", "Repr-Digest"])
def test_a_digest_algorithm_twice_is_refused(field: str) -> None:
    one, two = b64(b"\x01" * 32), b64(b"\x02" * 32)
    # Several lines are one Dictionary (RFC 9651): different algorithms on two lines are fine.
    refuse_repeated(headers((field, f"sha-256=:{one}:"), (field, f"sha-512=:{b64(b'x' * 64)}:")))
    refuse_repeated(headers((field, f"sha-256=:{one}:, unknown=:{two}:")))
    for found in (
        headers((field, f"sha-256=:{one}:"), (field, f"sha-256=:{two}:")),
        headers((field, f"sha-256=:{one}:, sha-256=:{two}:")),
        headers((field, f"sha-256=:{one}:"), (field.lower(), f"sha-256=:{one}:")),
    ):
        err = assert_repeated(found, field)
        assert "sha-256" in err.message
    # Malformed: refused with its own message where the field is read, not here.
    refuse_repeated(headers((field, "sha-256=not-bytes, sha-256=:x")))


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*SINGLE_HEADERS, *DIGEST_FIELDS, "Accept", "Via"]),
            st.text(max_size=40),
        ),
        max_size=8,
    )
)
def test_refuse_repeated_raises_nothing_but_repeated_header(pairs: list[tuple[str, str]]) -> None:
    found = headers(*pairs)
    try:
        refuse_repeated(found)
    except RepeatedHeader as err:
        assert err.header in (*SINGLE_HEADERS, *DIGEST_FIELDS)
    else:
        for name in SINGLE_HEADERS:
            assert len(found.getall(name, [])) <= 1
