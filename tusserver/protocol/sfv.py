"""Structured Field Values for HTTP (RFC 9651): a strict parser and a small serializer.

Pure functions, no I/O. The parsers follow the algorithms of RFC 9651 section 4.2 step by
step and raise :class:`SFVError` (a ``ValueError``) on anything they do not accept; the
draft-specific helpers at the end (``parse_boolean``, ``parse_integer``, ...) turn a failure
or a value of the wrong type into ``None``, because the resumable-upload draft says such
values "MUST cause the entire header field to be ignored".

A field sent on several lines is one value: the caller joins the lines with ``", "`` before
parsing (RFC 9651 section 4.2), so a duplicated Item field such as ``Upload-Complete: ?1``
twice fails to parse, as it should (such requests are refused before any parsing, by
:func:`tusserver.protocol.headers.refuse_repeated`, which uses :func:`dictionary_keys` to
find an algorithm named twice in a digest field).
"""

from __future__ import annotations

import base64
import binascii
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

__all__ = [
    "BareItem",
    "Date",
    "Dictionary",
    "DisplayString",
    "InnerList",
    "Item",
    "List",
    "SFVError",
    "Token",
    "dictionary_keys",
    "parse_boolean",
    "parse_byte_sequence_dictionary",
    "parse_dictionary",
    "parse_integer",
    "parse_item",
    "parse_list",
    "parse_non_negative_integer",
    "serialize_dictionary",
    "serialize_item",
]

#: Largest magnitude of an Integer (15 decimal digits).
MAX_INTEGER = 999_999_999_999_999


class SFVError(ValueError):
    """The field value is not a valid structured field of the expected kind."""


@dataclass(frozen=True, slots=True)
class Token:
    value: str


@dataclass(frozen=True, slots=True)
class Date:
    """A Date (RFC 9651 section 3.3.7): seconds since the epoch."""

    seconds: int


@dataclass(frozen=True, slots=True)
class DisplayString:
    value: str


BareItem = int | Decimal | str | Token | bytes | bool | Date | DisplayString
Parameters = dict[str, BareItem]


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InnerList:
    items: list[Item]
    params: Parameters = field(default_factory=dict)


List = list[Item | InnerList]
Dictionary = dict[str, Item | InnerList]

_DIGITS = frozenset(string.digits)
_ALPHA = frozenset(string.ascii_letters)
_LCALPHA = frozenset(string.ascii_lowercase)
_TCHAR = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~")
_TOKEN_CHARS = _TCHAR | frozenset(":/")
_KEY_FIRST = _LCALPHA | {"*"}
_KEY_CHARS = _LCALPHA | _DIGITS | frozenset("_-.*")
_BASE64 = _ALPHA | _DIGITS | frozenset("+/=")
_LCHEX = frozenset("0123456789abcdef")


class _Parser:
    """Consumes ``text`` left to right; ``pos`` is the next unread character."""

    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise SFVError("structured fields are ASCII only")
        self.text = text
        self.pos = 0

    # --- low level --------------------------------------------------------------------

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise SFVError("unexpected end of the field value")
        self.pos += 1
        return char

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def finish(self) -> None:
        self.skip_sp()
        if not self.at_end():
            raise SFVError(f"unexpected {self.peek()!r} at position {self.pos}")

    # --- top level (section 4.2.1 / 4.2.2) ----------------------------------------------

    def list_members(self) -> List:
        members: List = []
        while not self.at_end():
            members.append(self.item_or_inner_list())
            self.skip_ows()
            if self.at_end():
                return members
            if self.take() != ",":
                raise SFVError("list members must be separated by ','")
            self.skip_ows()
            if self.at_end():
                raise SFVError("trailing ',' in a list")
        return members

    def dictionary(self) -> Dictionary:
        # "If dictionary already contains a key this_key, overwrite its value."
        return dict(self.dictionary_members())

    def dictionary_members(self) -> list[tuple[str, Item | InnerList]]:
        """A Dictionary's members in order, a repeated key as often as it appears."""
        members: list[tuple[str, Item | InnerList]] = []
        while not self.at_end():
            key = self.key()
            if self.peek() == "=":
                self.pos += 1
                member: Item | InnerList = self.item_or_inner_list()
            else:
                member = Item(True, self.parameters())
            members.append((key, member))
            self.skip_ows()
            if self.at_end():
                return members
            if self.take() != ",":
                raise SFVError("dictionary members must be separated by ','")
            self.skip_ows()
            if self.at_end():
                raise SFVError("trailing ',' in a dictionary")
        return members

    def item_or_inner_list(self) -> Item | InnerList:
        if self.peek() == "(":
            return self.inner_list()
        return self.item()

    def inner_list(self) -> InnerList:
        if self.take() != "(":
            raise SFVError("an inner list starts with '('")
        items: list[Item] = []
        while not self.at_end():
            self.skip_sp()
            if self.peek() == ")":
                self.pos += 1
                return InnerList(items, self.parameters())
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise SFVError("inner list members must be separated by a space")
        raise SFVError("an inner list must end with ')'")

    def item(self) -> Item:
        value = self.bare_item()
        return Item(value, self.parameters())

    def parameters(self) -> Parameters:
        params: Parameters = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip_sp()
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    def key(self) -> str:
        if self.peek() not in _KEY_FIRST:
            raise SFVError("a key starts with a lowercase letter or '*'")
        start = self.pos
        while not self.at_end() and self.peek() in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    # --- bare items (section 4.2.3) -------------------------------------------------------

    def bare_item(self) -> BareItem:
        char = self.peek()
        if not char:
            raise SFVError("an item is missing")
        if char == "-" or char in _DIGITS:
            return self.number()
        if char == '"':
            return self.string()
        if char == "*" or char in _ALPHA:
            return self.token()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            return self.boolean()
        if char == "@":
            return self.date()
        if char == "%":
            return self.display_string()
        raise SFVError(f"{char!r} does not start an item")

    def number(self) -> int | Decimal:
        sign = 1
        if self.peek() == "-":
            self.pos += 1
            sign = -1
        if self.peek() not in _DIGITS:
            raise SFVError("a number needs a digit")
        digits = ""
        is_decimal = False
        while not self.at_end():
            char = self.peek()
            if char in _DIGITS:
                digits += char
            elif not is_decimal and char == ".":
                if len(digits) > 12:
                    raise SFVError("a decimal has at most 12 integer digits")
                digits += char
                is_decimal = True
            else:
                break
            self.pos += 1
            if not is_decimal and len(digits) > 15:
                raise SFVError("an integer has at most 15 digits")
            if is_decimal and len(digits) > 16:
                raise SFVError("a decimal has at most 16 characters")
        if not is_decimal:
            return sign * int(digits)
        if digits.endswith("."):
            raise SFVError("a decimal needs a fraction digit")
        if len(digits) - digits.index(".") - 1 > 3:
            raise SFVError("a decimal has at most 3 fraction digits")
        return sign * Decimal(digits)

    def string(self) -> str:
        self.take()  # '"'
        out: list[str] = []
        while not self.at_end():
            char = self.take()
            if char == "\\":
                if self.at_end():
                    raise SFVError("a string ends inside an escape")
                escaped = self.take()
                if escaped not in ('"', "\\"):
                    raise SFVError('only \\" and \\\\ are escapes in a string')
                out.append(escaped)
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise SFVError("a string holds printable ASCII only")
            else:
                out.append(char)
        raise SFVError("a string must end with '\"'")

    def token(self) -> Token:
        start = self.pos
        self.pos += 1  # ALPHA or '*', checked by bare_item
        while not self.at_end() and self.peek() in _TOKEN_CHARS:
            self.pos += 1
        return Token(self.text[start : self.pos])

    def byte_sequence(self) -> bytes:
        self.take()  # ':'
        end = self.text.find(":", self.pos)
        if end < 0:
            raise SFVError("a byte sequence must end with ':'")
        content = self.text[self.pos : end]
        self.pos = end + 1
        if any(c not in _BASE64 for c in content):
            raise SFVError("a byte sequence holds base64 characters only")
        # Padding is synthesised when missing (section 4.2.7: parsers SHOULD NOT fail then).
        padded = content + "=" * (-len(content) % 4)
        try:
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise SFVError("a byte sequence is not valid base64") from None

    def boolean(self) -> bool:
        self.take()  # '?'
        char = self.peek()
        if char == "1":
            self.pos += 1
            return True
        if char == "0":
            self.pos += 1
            return False
        raise SFVError("a boolean is ?0 or ?1")

    def date(self) -> Date:
        self.take()  # '@'
        value = self.number()
        if isinstance(value, Decimal):
            raise SFVError("a date is an integer")
        return Date(value)

    def display_string(self) -> DisplayString:
        self.take()  # '%'
        if self.peek() != '"':
            raise SFVError('a display string starts with %"')
        self.pos += 1
        raw = bytearray()
        while not self.at_end():
            char = self.take()
            if not " " <= char <= "~":
                raise SFVError("a display string holds printable ASCII only")
            if char == "%":
                octet = self.text[self.pos : self.pos + 2]
                if len(octet) != 2 or any(c not in _LCHEX for c in octet):
                    raise SFVError("a display string escape is '%' and two lowercase hex digits")
                self.pos += 2
                raw.append(int(octet, 16))
            elif char == '"':
                try:
                    return DisplayString(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise SFVError("a display string is not valid UTF-8") from None
            else:
                raw.append(ord(char))
        raise SFVError("a display string must end with '\"'")


def _parse(text: str, kind: str) -> Item | List | Dictionary:
    p = _Parser(text)
    p.skip_sp()
    result: Item | List | Dictionary
    if kind == "item":
        result = p.item()
    elif kind == "list":
        result = p.list_members()
    else:
        result = p.dictionary()
    p.finish()
    return result


def parse_item(text: str) -> Item:
    """Parse an Item field value (RFC 9651 section 4.2, field type "item")."""
    result = _parse(text, "item")
    assert isinstance(result, Item)
    return result


def parse_list(text: str) -> List:
    """Parse a List field value; an empty value is an empty list."""
    result = _parse(text, "list")
    assert isinstance(result, list)
    return result


def parse_dictionary(text: str) -> Dictionary:
    """Parse a Dictionary field value; a key seen twice keeps its last value."""
    result = _parse(text, "dictionary")
    assert isinstance(result, dict)
    return result


def dictionary_keys(text: str) -> list[str]:
    """The keys of a Dictionary field value in order, a key repeated as often as it is
    (:func:`parse_dictionary` keeps only its last value)."""
    p = _Parser(text)
    p.skip_sp()
    members = p.dictionary_members()
    p.finish()
    return [key for key, _ in members]


# --- the draft's fields: wrong values are ignored (None) ---------------------------------


def parse_boolean(text: str | None) -> bool | None:
    """An Item whose value is a Boolean (parameters ignored), else None."""
    if text is None:
        return None
    try:
        value = parse_item(text).value
    except SFVError:
        return None
    return value if isinstance(value, bool) else None


def parse_integer(text: str | None) -> int | None:
    """An Item whose value is an Integer (not a Boolean, not a Decimal), else None."""
    if text is None:
        return None
    try:
        value = parse_item(text).value
    except SFVError:
        return None
    return value if type(value) is int else None


def parse_non_negative_integer(text: str | None) -> int | None:
    """An Item whose value is an Integer >= 0, else None (Upload-Offset, Upload-Length)."""
    value = parse_integer(text)
    return value if value is not None and value >= 0 else None


def parse_byte_sequence_dictionary(text: str) -> dict[str, bytes]:
    """A Dictionary whose members are all Byte Sequences (RFC 9530 digest fields).

    Raises :class:`SFVError` when the value does not parse or a member is not a Byte
    Sequence; parameters are ignored.
    """
    result: dict[str, bytes] = {}
    for key, member in parse_dictionary(text).items():
        if not isinstance(member, Item) or not isinstance(member.value, bytes):
            raise SFVError(f"member {key!r} is not a byte sequence")
        result[key] = member.value
    return result


# --- serializing (section 4.1) -------------------------------------------------------------


def _serialize_key(key: str) -> str:
    if not key or key[0] not in _KEY_FIRST or any(c not in _KEY_CHARS for c in key):
        raise SFVError(f"{key!r} is not a valid key")
    return key


def _serialize_bare_item(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if abs(value) > MAX_INTEGER:
            raise SFVError("integer out of range")
        return str(value)
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode("ascii") + ":"
    if isinstance(value, Token):
        v = value.value
        if not v or not (v[0] in _ALPHA or v[0] == "*") or any(c not in _TOKEN_CHARS for c in v):
            raise SFVError(f"{v!r} is not a valid token")
        return v
    if isinstance(value, str):
        if not value.isascii() or any(not " " <= c <= "~" for c in value):
            raise SFVError("a string holds printable ASCII only")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Date):
        return "@" + _serialize_bare_item(value.seconds)
    if isinstance(value, Decimal):
        rounded = value.quantize(Decimal("0.001"))
        if abs(rounded) >= Decimal(10) ** 12:
            raise SFVError("decimal out of range")
        text = format(rounded.normalize(), "f")
        return text if "." in text else text + ".0"
    raise SFVError(f"cannot serialize {type(value).__name__}")


def _serialize_params(params: Mapping[str, BareItem]) -> str:
    out = []
    for key, value in params.items():
        out.append(";" + _serialize_key(key))
        if value is not True:
            out.append("=" + _serialize_bare_item(value))
    return "".join(out)


def serialize_item(value: BareItem, params: Mapping[str, BareItem] | None = None) -> str:
    """Serialize an Item field value: ``serialize_item(True)`` is ``?1``."""
    return _serialize_bare_item(value) + _serialize_params(params or {})


def serialize_dictionary(members: Mapping[str, BareItem]) -> str:
    """Serialize a Dictionary of bare items (``max-size=100, max-age=3600``).

    A member whose value is True is written as its key alone, as section 4.1.2 asks.
    An empty mapping gives "" (the field should then not be sent at all).
    """
    out = []
    for key, value in members.items():
        k = _serialize_key(key)
        out.append(k if value is True else f"{k}={_serialize_bare_item(value)}")
    return ", ".join(out)
