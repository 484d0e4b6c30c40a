"""Parsing and formatting of tus headers: pure functions, no I/O.

Every value a client sends is hostile until one of these functions accepted it. Each parser
either returns a well-typed value or raises :class:`~tusserver.errors.BadRequest`
(or the specific error the spec asks for) with a message naming the header.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import re
from collections.abc import Collection, Mapping

from multidict import MultiMapping

from ..errors import BadRequest, RepeatedHeader
from ..types import MAX_INT, Checksum, ConcatFinal, ConcatPartial
from . import sfv

__all__ = [
    "DIGEST_FIELDS",
    "IETF_IGNORED_WHEN_REPEATED",
    "MAX_INT",
    "MAX_METADATA_CHARS",
    "SINGLE_HEADERS",
    "SUPPORTED_CHECKSUMS",
    "TUS_VERSION",
    "Checksum",
    "ConcatFinal",
    "ConcatPartial",
    "format_http_date",
    "format_metadata",
    "parse_checksum",
    "parse_concat",
    "parse_defer_length",
    "parse_metadata",
    "parse_non_negative_int",
    "refuse_repeated",
]

TUS_VERSION = "1.0.0"
#: Largest integer accepted in Upload-Offset / Upload-Length (what a signed 64-bit column holds).
#: Algorithms of the checksum extension, by their tus names (lowercase, as the spec requires).
SUPPORTED_CHECKSUMS: tuple[str, ...] = ("sha1", "md5", "sha256", "sha512")

_DIGITS = re.compile(r"[0-9]{1,19}")
# Keys: visible ASCII without space and comma (the separators of the header).
_META_KEY = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_MAX_META_PAIRS = 128
#: The longest Upload-Metadata value read (characters of the header, base64 included): what
#: aiohttp's default header limit let through before the server read 64 KiB values (for
#: Upload-Concat). Metadata is held for the owner in the catalog and is not counted against
#: the storage quota, so it is bounded instead: 128 pairs of 64 KiB were 45 KiB of storage
#: per empty upload, past any quota.
MAX_METADATA_CHARS = 8 * 1024
# tus ids are ours: letters, digits, '-' and '_' only (never a path).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


#: Request headers of tus 1.0.0 and of the IETF draft that a request carries at most once.
#: Both protocols are served on the same URLs, so every request is held to the whole list.
SINGLE_HEADERS: tuple[str, ...] = (
    # tus 1.0.0 (X-HTTP-Method-Override decides the method: two would be two methods)
    "Tus-Resumable",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Checksum",
    "Upload-Concat",
    "X-HTTP-Method-Override",
    # the IETF draft (Upload-Offset and Upload-Length above are its too)
    "Upload-Draft-Interop-Version",
    "Upload-Complete",
    "Upload-Incomplete",
)
#: Of those, the ones whose one value is a number or a boolean: a comma-separated list of
#: several values in one line is what a client or a proxy that merges repeated lines
#: (RFC 9110 section 5.3) makes of several headers, and is refused the same way.
_ONE_VALUE: tuple[str, ...] = (
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Draft-Interop-Version",
    "Upload-Complete",
    "Upload-Incomplete",
)
#: Fields the IETF draft reads as ignored when their value is not one Integer, several
#: values included ("Other values MUST cause the entire header field to be ignored"): a draft
#: request sending several is not refused, the field is ignored (the length stays unknown
#: until the upload completes), as the draft requires.
IETF_IGNORED_WHEN_REPEATED: tuple[str, ...] = ("Upload-Length",)
#: RFC 9530 digest fields: Dictionaries, so several lines are one value (RFC 9651), but an
#: algorithm may appear once (RFC 9651 would keep its last digest, a proxy maybe the first).
DIGEST_FIELDS: tuple[str, ...] = ("Content-Digest", "Repr-Digest")


def refuse_repeated(headers: MultiMapping[str], *, ignored: Collection[str] = ()) -> None:
    """Raise :class:`RepeatedHeader` when a request carries one of :data:`SINGLE_HEADERS`
    more than once, a number or a boolean of them as a list, or a digest algorithm twice.

    Run once per request, before any of its headers is read (``TusHandlers`` does, for
    tus and the IETF draft alike), so every layer reads the one value there is. The values
    themselves are checked by the parsers here and in :mod:`.sfv`, not by this function.
    ``ignored``: fields whose protocol says what several values mean (the IETF draft's
    ``Upload-Length``: the field is ignored, :data:`IETF_IGNORED_WHEN_REPEATED`).
    """
    for name in SINGLE_HEADERS:
        if name in ignored:
            continue
        values = headers.getall(name, ())
        if len(values) > 1:
            raise RepeatedHeader(name)
        if values and name in _ONE_VALUE and _is_list(values[0]):
            raise RepeatedHeader(name)
    for name in DIGEST_FIELDS:
        lines = headers.getall(name, ())
        if not lines:
            continue
        try:
            keys = sfv.dictionary_keys(", ".join(lines))
        except sfv.SFVError:
            continue  # malformed: refused with its own message where the field is read
        seen: set[str] = set()
        for key in keys:
            if key in seen:
                raise RepeatedHeader(name, member=_quote(key))
            seen.add(key)


def _is_list(value: str) -> bool:
    """Whether a value is a list of several members (``5, 6``, ``?1,?0``).

    Read as an RFC 9651 List, so a comma inside a member (in a string parameter) is no
    separator; in a value that is no List at all (``5, ``, ``5,,6``) it can only be one.
    """
    if "," not in value:
        return False
    try:
        return len(sfv.parse_list(value)) > 1
    except sfv.SFVError:
        return True


def parse_non_negative_int(value: str, header: str) -> int:
    """Parse an Upload-Offset / Upload-Length style value: plain ASCII digits, no sign."""
    v = value.strip()
    if not _DIGITS.fullmatch(v):
        raise BadRequest(f"{header} must be a non-negative integer, got {_quote(value)}")
    n = int(v)
    if n > MAX_INT:
        raise BadRequest(f"{header} is too large")
    return n


def parse_defer_length(value: str) -> bool:
    """Upload-Defer-Length: the only valid value is 1."""
    if value.strip() != "1":
        raise BadRequest(f"Upload-Defer-Length must be 1, got {_quote(value)}")
    return True


def parse_metadata(value: str) -> dict[str, bytes | None]:
    """Parse Upload-Metadata: comma-separated ``key base64value`` pairs (value optional).

    Values are arbitrary bytes and are kept as such; keys must be unique.
    """
    result: dict[str, bytes | None] = {}
    if not value.strip():
        return result
    pairs = value.split(",")
    if len(pairs) > _MAX_META_PAIRS:
        raise BadRequest(f"Upload-Metadata has more than {_MAX_META_PAIRS} pairs")
    if len(value) > MAX_METADATA_CHARS:
        raise BadRequest(f"Upload-Metadata is longer than {MAX_METADATA_CHARS} characters")
    for raw in pairs:
        pair = raw.strip(" \t")
        if not pair:
            raise BadRequest("Upload-Metadata has an empty pair")
        parts = pair.split(" ")
        if len(parts) > 2:
            raise BadRequest(f"Upload-Metadata pair {_quote(pair)} has more than one space")
        key = parts[0]
        if not _META_KEY.fullmatch(key):
            raise BadRequest(f"Upload-Metadata key {_quote(key)} is not a valid key")
        if key in result:
            raise BadRequest(f"Upload-Metadata key {_quote(key)} appears twice")
        if len(parts) == 1:
            result[key] = None
            continue
        encoded = parts[1]
        try:
            result[key] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                f"Upload-Metadata value of {_quote(key)} is not valid base64"
            ) from None
    return result


def format_metadata(metadata: Mapping[str, bytes | None]) -> str:
    """The Upload-Metadata header for stored metadata: values byte-for-byte, base64 again."""
    items = []
    for key, val in metadata.items():
        if val is None:
            items.append(key)
        else:
            items.append(f"{key} {base64.b64encode(val).decode('ascii')}")
    return ",".join(items)


def parse_concat(value: str, base_path: str) -> ConcatPartial | ConcatFinal:
    """Parse Upload-Concat. URLs may be absolute or relative; each must name one of our uploads.

    ``base_path`` is the path of the creation URL (``/uploads/``); a URL is accepted when its
    path is ``base_path`` followed by a well-formed id.
    """
    v = value.strip()
    if v == "partial":
        return ConcatPartial()
    if not v.startswith("final;"):
        raise BadRequest("Upload-Concat must be 'partial' or 'final;<urls>'")
    urls = v[len("final;") :].split()
    if not urls:
        raise BadRequest("Upload-Concat final names no uploads")
    if len(urls) > 1000:
        raise BadRequest("Upload-Concat final names too many uploads")
    return ConcatFinal(tuple(upload_id_from_url(u, base_path) for u in urls))


def upload_id_from_url(url: str, base_path: str) -> str:
    """The upload id in a URL of ours (absolute or relative), or BadRequest."""
    path = re.split(r"[?#]", url, maxsplit=1)[0]
    if "://" in url:
        rest = re.split(r"[?#]", url.split("://", 1)[1], maxsplit=1)[0]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    base = base_path if base_path.endswith("/") else base_path + "/"
    if not path.startswith(base):
        raise BadRequest(f"Upload-Concat URL {_quote(url)} is not an upload of this server")
    upload_id = path[len(base) :]
    if not _ID.fullmatch(upload_id):
        raise BadRequest(f"Upload-Concat URL {_quote(url)} does not name a valid upload")
    return upload_id


def is_valid_upload_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def parse_checksum(value: str) -> Checksum:
    """Parse ``Upload-Checksum: <algorithm> <base64 digest>``.

    An algorithm we do not support is a 400, as the checksum extension requires.
    """
    parts = value.strip().split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts
    if algorithm not in SUPPORTED_CHECKSUMS:
        raise BadRequest(
            f"Upload-Checksum algorithm {_quote(algorithm)} is not supported; "
            f"supported: {','.join(SUPPORTED_CHECKSUMS)}"
        )
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Upload-Checksum digest is not valid base64") from None
    return Checksum(algorithm, digest)


def format_http_date(when: dt.datetime) -> str:
    """An RFC 9110 IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)


def _quote(value: str, limit: int = 64) -> str:
    """Quote a client value for an error message, shortened and with controls escaped."""
    shown = value if len(value) <= limit else value[:limit] + "..."
    return repr(shown)
