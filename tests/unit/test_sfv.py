"""Unit tests of ``tusserver.protocol.sfv``: RFC 9651 parsing and serializing, hostile input.

Expected values follow the algorithms of RFC 9651 section 4; where the RFC leaves a choice
(padding of byte sequences), the comment says which one is made.
"""

from __future__ import annotations

import base64
import contextlib
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tusserver.protocol import sfv
from tusserver.protocol.sfv import (
    Date,
    DisplayString,
    InnerList,
    Item,
    SFVError,
    Token,
    dictionary_keys,
    parse_boolean,
    parse_byte_sequence_dictionary,
    parse_dictionary,
    parse_integer,
    parse_item,
    parse_list,
    parse_non_negative_integer,
    serialize_dictionary,
    serialize_item,
)

# --- items: every bare item type ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("-42", -42),
        ("-0", 0),
        ("007", 7),
        ("999999999999999", 999_999_999_999_999),
        ("-999999999999999", -999_999_999_999_999),
        ("1.5", Decimal("1.5")),
        ("-1.125", Decimal("-1.125")),
        ("123456789012.123", Decimal("123456789012.123")),
        ('"hello"', "hello"),
        ('""', ""),
        ('"a \\"quoted\\" \\\\ word"', 'a "quoted" \\ word'),
        ("foo", Token("foo")),
        ("*foo/bar:baz", Token("*foo/bar:baz")),
        ("Abc-1.2_~", Token("Abc-1.2_~")),
        (":aGVsbG8=:", b"hello"),
        ("::", b""),
        ("?1", True),
        ("?0", False),
        ("@1659578233", Date(1659578233)),
        ("@-1", Date(-1)),
        ('%"caf%c3%a9"', DisplayString("café")),
        ('%"plain"', DisplayString("plain")),
    ],
)
def test_bare_items(text: str, value: object) -> None:
    item = parse_item(text)
    assert item.value == value
    assert type(item.value) is type(value)
    assert item.params == {}


def test_leading_and_trailing_spaces_are_discarded() -> None:
    assert parse_item("   ?1   ").value is True


def test_parameters_in_order_last_value_wins() -> None:
    item = parse_item('?1;a=1;b;c="x";a=2;d=?0')
    assert item.value is True
    assert item.params == {"a": 2, "b": True, "c": "x", "d": False}
    assert list(item.params) == ["a", "b", "c", "d"]


def test_parameter_space_after_semicolon_is_allowed() -> None:
    assert parse_item("1; a=2").params == {"a": 2}


def test_byte_sequence_padding_is_synthesised() -> None:
    # RFC 9651 4.2.7: parsers SHOULD NOT fail when "=" padding is missing.
    assert parse_item(":aGVsbG8:").value == b"hello"
    assert parse_item(":YQ:").value == b"a"


@pytest.mark.parametrize(
    "text",
    [
        "",  # nothing
        " ",
        "1000000000000000",  # 16 digits
        "-1000000000000000",
        "1234567890123.1",  # 13 integer digits in a decimal
        "1.1234",  # 4 fraction digits
        "1.",  # no fraction digit
        "-",
        "-a",
        "+1",
        ".5",
        '"unterminated',
        '"bad \\n escape"',
        '"tab\there"',
        '"trailing backslash\\',
        "?",
        "?2",
        "?true",
        "?01",
        "yes?",  # token then garbage
        ":aGVsbG8=",  # unterminated byte sequence
        ":aGV sbG8=:",
        ":a$b=:",
        ":Y===:",  # impossible base64 length
        ":=YQ=:",
        "@",
        "@1.5",
        "@x",
        '%"',
        "%plain",
        '%"%C3%A9"',  # uppercase hex is not allowed
        '%"%c3"',  # not UTF-8
        '%"%zz"',
        '%"bad\x7f"',
        "1 2",
        "1,2",
        "?1, ?1",  # a duplicated Item field, its lines joined
        "?1;",  # parameter without key
        "?1;A=1",  # uppercase key
        "?1;1a=1",
        "?1;a=",  # parameter without value
        "(1 2)",  # an inner list is not an item
        "caf\u00e9",  # non-ASCII
        "\t?1",  # only SP is discarded at the start
        "?1\t",
        "=1",
        ",",
    ],
)
def test_invalid_items(text: str) -> None:
    with pytest.raises(SFVError):
        parse_item(text)


def test_sfv_error_is_a_value_error() -> None:
    assert issubclass(SFVError, ValueError)


# --- lists and dictionaries ----------------------------------------------------------------


def test_list_with_inner_lists_and_parameters() -> None:
    result = parse_list('1, (a "b";x=1);y, ?0 ,\t:YQ==:')
    assert result == [
        Item(1),
        InnerList([Item(Token("a")), Item("b", {"x": 1})], {"y": True}),
        Item(False),
        Item(b"a"),
    ]


def test_empty_list_and_empty_inner_list() -> None:
    assert parse_list("") == []
    assert parse_list("()") == [InnerList([])]
    assert parse_list("(  )") == [InnerList([])]


@pytest.mark.parametrize(
    "text", ["1,", "1,,2", ",1", "1 2", "(1", "(1,2)", "(1)(2)", "1;", "(1 2)x"]
)
def test_invalid_lists(text: str) -> None:
    with pytest.raises(SFVError):
        parse_list(text)


def test_dictionary_members_bare_true_and_overwrite() -> None:
    result = parse_dictionary("a=1, b, c=?0;p, d=(1 2), a=3")
    assert result == {
        "a": Item(3),
        "b": Item(True),
        "c": Item(False, {"p": True}),
        "d": InnerList([Item(1), Item(2)]),
    }
    # A key seen twice keeps its first position and its last value.
    assert list(result) == ["a", "b", "c", "d"]


def test_dictionary_keys_keep_every_occurrence() -> None:
    assert dictionary_keys("a=1, b, c=?0;p, d=(1 2), a=3") == ["a", "b", "c", "d", "a"]
    assert dictionary_keys("") == []
    assert dictionary_keys("sha-256=:AAAA:") == ["sha-256"]


@pytest.mark.parametrize("text", ["A=1", "a=1,", "a=1 b=2", "a=1,,b=2"])
def test_dictionary_keys_of_invalid_dictionaries(text: str) -> None:
    with pytest.raises(SFVError):
        dictionary_keys(text)


def test_dictionary_bare_key_with_parameters() -> None:
    assert parse_dictionary("a;x=1") == {"a": Item(True, {"x": 1})}


@pytest.mark.parametrize(
    "text", ["A=1", "a=1,", "a=1 b=2", "a==1", "1=1", "a=", "a=1,,b=2", "-a=1", "a=1;"]
)
def test_invalid_dictionaries(text: str) -> None:
    with pytest.raises(SFVError):
        parse_dictionary(text)


def test_upload_limit_example_of_the_draft() -> None:
    assert parse_dictionary("max-size=1234567890, max-age=3600") == {
        "max-size": Item(1234567890),
        "max-age": Item(3600),
    }


# --- the draft's helpers: other values are ignored (None) ---------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("?1", True),
        ("?0", False),
        ("?1;foo=bar", True),
        (None, None),
        ("", None),
        ("1", None),
        ("yes", None),
        ("true", None),
        ("?2", None),
        ('"?1"', None),
        ("?1, ?1", None),
        ("?1 ?1", None),
        ("(?1)", None),
    ],
)
def test_parse_boolean(text: str | None, value: bool | None) -> None:
    assert parse_boolean(text) is value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8", 8),
        ("8;x", 8),
        ("-3", -3),
        ("?1", None),  # a Boolean is not an Integer
        ("8.0", None),  # a Decimal is not an Integer
        ('"8"', None),
        ("8, 8", None),
        ("1000000000000000", None),
        ("0x10", None),
        (None, None),
    ],
)
def test_parse_integer(text: str | None, value: int | None) -> None:
    assert parse_integer(text) == value


def test_parse_non_negative_integer() -> None:
    assert parse_non_negative_integer("0") == 0
    assert parse_non_negative_integer("15") == 15
    assert parse_non_negative_integer("-1") is None
    assert parse_non_negative_integer("1.5") is None
    assert parse_non_negative_integer(None) is None


def test_digest_dictionary() -> None:
    sha = base64.b64encode(b"\x01" * 32).decode()
    assert parse_byte_sequence_dictionary(f"sha-256=:{sha}:, md5=:AQ==:;p=1") == {
        "sha-256": b"\x01" * 32,
        "md5": b"\x01",
    }
    assert parse_byte_sequence_dictionary("") == {}


@pytest.mark.parametrize(
    "text",
    [
        "sha-256=abc",  # a token, not a byte sequence
        'sha-256="abc"',
        "sha-256",  # bare key: Boolean true
        "sha-256=(:YQ==:)",  # inner list
        "sha-256=:YQ==",
        "SHA-256=:YQ==:",
        "sha-256=:YQ==:,",
        "sha-256=:Y$Q=:",
    ],
)
def test_invalid_digest_dictionaries(text: str) -> None:
    with pytest.raises(SFVError):
        parse_byte_sequence_dictionary(text)


# --- serializing ---------------------------------------------------------------------------


def test_serialize_items() -> None:
    assert serialize_item(True) == "?1"
    assert serialize_item(False) == "?0"
    assert serialize_item(0) == "0"
    assert serialize_item(-5) == "-5"
    assert serialize_item(b"hello") == ":aGVsbG8=:"
    assert serialize_item('a"b\\c') == '"a\\"b\\\\c"'
    assert serialize_item(Token("foo/bar")) == "foo/bar"
    assert serialize_item(Date(5)) == "@5"
    assert serialize_item(Decimal("1.50")) == "1.5"
    assert serialize_item(Decimal("2")) == "2.0"
    assert serialize_item(Decimal("1.0005")) == "1.0"  # rounded half to even
    assert serialize_item(1, {"a": True, "b": 2, "c": False}) == "1;a;b=2;c=?0"


@pytest.mark.parametrize(
    "value",
    [
        10**15,
        -(10**15),
        "caf\u00e9",
        "line\nbreak",
        Token(""),
        Token("1abc"),
        Token("a b"),
        Decimal(10) ** 12,
    ],
)
def test_serialize_rejects_what_cannot_be_a_field(value: sfv.BareItem) -> None:
    with pytest.raises(SFVError):
        serialize_item(value)


def test_serialize_dictionary() -> None:
    assert serialize_dictionary({"max-size": 100, "max-age": 3600}) == "max-size=100, max-age=3600"
    assert serialize_dictionary({"a": True, "b": False}) == "a, b=?0"
    assert serialize_dictionary({}) == ""
    for bad in ("Max", "1a", "", "a b"):
        with pytest.raises(SFVError):
            serialize_dictionary({bad: 1})


# --- properties ------------------------------------------------------------------------------


@given(st.integers(min_value=-sfv.MAX_INTEGER, max_value=sfv.MAX_INTEGER))
def test_integers_round_trip(n: int) -> None:
    assert parse_item(serialize_item(n)).value == n


@given(st.binary(max_size=200))
def test_byte_sequences_round_trip(data: bytes) -> None:
    assert parse_item(serialize_item(data)).value == data


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100))
def test_strings_round_trip(text: str) -> None:
    assert parse_item(serialize_item(text)).value == text


@given(
    st.dictionaries(
        st.from_regex(r"[a-z*][a-z0-9_.*-]{0,10}", fullmatch=True),
        st.integers(min_value=0, max_value=sfv.MAX_INTEGER),
        max_size=8,
    )
)
def test_integer_dictionaries_round_trip(members: dict[str, int]) -> None:
    parsed = parse_dictionary(serialize_dictionary(members))
    assert {k: v.value for k, v in parsed.items() if isinstance(v, Item)} == members


@settings(max_examples=500)
@given(st.text(max_size=60))
def test_parsers_never_raise_anything_but_sfv_error(text: str) -> None:
    for parse in (
        parse_item,
        parse_list,
        parse_dictionary,
        parse_byte_sequence_dictionary,
        dictionary_keys,
    ):
        with contextlib.suppress(SFVError):
            parse(text)
    # The helpers never raise at all.
    parse_boolean(text)
    parse_integer(text)
    parse_non_negative_integer(text)


@settings(max_examples=300)
@given(st.text(alphabet='?01-.:"%@;=,() abcAZ*/\\', max_size=30))
def test_grammar_characters_never_crash(text: str) -> None:
    for parse in (parse_item, parse_list, parse_dictionary):
        with contextlib.suppress(SFVError):
            parse(text)
