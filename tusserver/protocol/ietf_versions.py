"""The interop versions of draft-ietf-httpbis-resumable-upload, as data.

Every version from 3 to 8 is spoken on the same uploads through one lifecycle (the handlers
in :mod:`.ietf` and :class:`~tusserver.uploads.service.UploadService`). The versions differ
only in how HTTP is read and written: the name and polarity of the completeness field, which
fields exist, whether an append needs ``application/partial-upload``, which status codes
answer, what the 104 carries, the limits' keys and the problem types. Each version is one
:class:`Dialect` here; the handlers consult it and never branch on a version number.

The draft's change log gives the bumps: 3 = draft -01, 4 = -02, 5 = -03, 6 = -04 and -05,
7 = -06 to -08, 8 = -09 onwards. docs/ietf-draft.md has the table of what changed.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from . import sfv

__all__ = [
    "COMPLETED_UPLOAD",
    "DIALECTS",
    "INCONSISTENT_LENGTH",
    "INTEROP_HEADER",
    "MISMATCHING_OFFSET",
    "PARTIAL_UPLOAD",
    "SUPPORTED_VERSIONS",
    "Dialect",
    "Problem",
    "dialect_of",
    "field",
    "inconsistent_length",
    "mismatching_offset",
    "representation_metadata",
    "send_104",
]

INTEROP_HEADER = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD = "application/partial-upload"

_PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = _PROBLEM_TYPES + "mismatching-upload-offset"
COMPLETED_UPLOAD = _PROBLEM_TYPES + "completed-upload"
INCONSISTENT_LENGTH = _PROBLEM_TYPES + "inconsistent-upload-length"

_BOOL = {True: "?1", False: "?0"}


class Problem(Exception):
    """An error answered as an RFC 9457 problem document.

    ``type_`` defaults to ``about:blank`` (the title is then the status phrase); the
    draft's own types carry their extension members in ``members``. A dialect renders it
    (:meth:`Dialect.response`): a type its version does not define becomes ``about:blank``.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = "about:blank",
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        members: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title or HTTPStatus(status).phrase
        self.headers: dict[str, str] = dict(headers or {})
        self.members: dict[str, Any] = dict(members or {})

    def response(self) -> web.Response:
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.members,
        }
        resp = web.Response(
            status=self.status,
            body=json.dumps(doc).encode("utf-8"),
            content_type="application/problem+json",
        )
        resp.headers.update(self.headers)
        return resp


def field(request: web.Request, name: str) -> str | None:
    """A field's value, its lines joined as RFC 9651 section 4.2 asks (None if absent)."""
    values = request.headers.getall(name, [])
    return ", ".join(values) if values else None


def mismatching_offset(expected: int, provided: int) -> Problem:
    # "the server MUST reject the request with a 409 (Conflict) status code. The response
    # MUST include the correct offset in the Upload-Offset header field."
    return Problem(
        409,
        f"Upload-Offset {provided} does not match the upload's offset {expected}",
        type_=MISMATCHING_OFFSET,
        title="offset from request does not match offset of resource",
        headers={"Upload-Offset": str(expected)},
        members={"expected-offset": expected, "provided-offset": provided},
    )


def inconsistent_length(detail: str, headers: Mapping[str, str] | None = None) -> Problem:
    return Problem(
        400,
        detail,
        type_=INCONSISTENT_LENGTH,
        title="inconsistent length values for upload",
        headers=headers,
    )


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one interop version reads requests and writes responses."""

    version: int
    #: The draft revisions that define this version, for messages and docs.
    drafts: str
    #: The completeness field: ``Upload-Incomplete`` (3, true while incomplete) or
    #: ``Upload-Complete`` (4 on, true once complete).
    completeness_field: str
    #: What an absent completeness field means on a creation / an append: complete (True),
    #: not complete (False), or a 400 (None).
    absent_on_create: bool | None
    absent_on_append: bool | None
    #: ``Upload-Length`` exists, so responses carry it: from 6 (-05). Requests of every
    #: version may declare it (see :meth:`read_length`).
    length_field: bool
    #: An append must be ``Content-Type: application/partial-upload``: from 6 (-04).
    partial_upload: bool
    #: Fields that make a HEAD / DELETE a 400 ("MUST reject ... with a 400"): until 6.
    refused_on_head: tuple[str, ...]
    refused_on_delete: tuple[str, ...]
    #: ``Upload-Limit`` exists (from 6), with this key for the remaining lifetime
    #: (``expires`` in 6, ``max-age`` from 7); None: no Upload-Limit at all (3 to 5).
    lifetime_key: str | None
    #: "If the server does not apply any limits, it MUST use min-size=0" (6 and 7).
    min_size_placeholder: bool
    #: The problem types the version defines; others are answered as ``about:blank``.
    problem_types: frozenset[str]
    #: Status of a successful append that leaves the upload incomplete / completes it.
    append_status: tuple[int, int]
    #: "The server MUST send the Upload-Offset header in the response if it considers the
    #: upload active ... when the response is a failure" (3 to 6).
    offset_on_errors: bool
    #: An append with a false completeness: "Any response, successful or not, MUST then
    #: include the Upload-Complete header field with a false value" (7).
    complete_on_errors: bool
    #: The status for an upload resource that is no longer active (cancelled, expired,
    #: refused): "it MUST respond with a 404 (Not Found) status code" (3 to 6, for offset
    #: retrieval, append and cancellation); 410 (Gone) from 7, which no longer says so.
    inactive_status: int = 410

    # --- reading ------------------------------------------------------------------------

    def read_complete(self, request: web.Request, *, creating: bool) -> bool:
        """Whether the request says its content ends the upload."""
        raw = field(request, self.completeness_field)
        absent = self.absent_on_create if creating else self.absent_on_append
        if raw is None and absent is not None:
            return absent
        value = sfv.parse_boolean(raw)
        if value is None:
            raise Problem(
                400,
                f"{self.completeness_field} must be the structured-field Boolean ?0 or ?1",
            )
        return not value if self.completeness_field == "Upload-Incomplete" else value

    @staticmethod
    def read_length(request: web.Request) -> int | None:
        """``Upload-Length`` (other values are ignored), in every version.

        3 to 5 do not define the field, but tusd reads it in every version and
        tus-js-client's ``ietf-draft-03`` mode (interop 5) sends it at creation and relies
        on it: its last append does not always say ``Upload-Complete: ?1``, and the upload
        then finishes because its offset reaches that length.
        """
        return sfv.parse_non_negative_integer(field(request, "Upload-Length"))

    def refuse(self, request: web.Request, fields: tuple[str, ...]) -> None:
        present = [name for name in fields if name in request.headers]
        if present:
            raise Problem(
                400,
                f"this request must not carry {', '.join(present)} "
                f"(Upload-Draft-Interop-Version {self.version})",
            )

    # --- writing ------------------------------------------------------------------------

    def completeness(self, complete: bool) -> dict[str, str]:
        if self.completeness_field == "Upload-Incomplete":
            return {"Upload-Incomplete": _BOOL[not complete]}
        return {"Upload-Complete": _BOOL[complete]}

    def state_headers(self, offset: int, complete: bool, length: int | None) -> dict[str, str]:
        headers = {"Upload-Offset": str(offset), **self.completeness(complete)}
        if self.length_field and length is not None:
            headers["Upload-Length"] = str(length)
        return headers

    def limit_header(self, limits: Mapping[str, int]) -> dict[str, str]:
        """``Upload-Limit`` with this version's keys; ``max-age`` names the lifetime.

        An empty Dictionary is not sent (RFC 9651 section 4.1) unless the version wants
        ``min-size=0`` then; a structured-field Integer has at most 15 digits, so a larger
        limit is announced as that maximum.
        """
        if self.lifetime_key is None:
            return {}
        members = {
            (self.lifetime_key if key == "max-age" else key): min(value, sfv.MAX_INTEGER)
            for key, value in limits.items()
        }
        if not members:
            if not self.min_size_placeholder:
                return {}
            members = {"min-size": 0}
        return {"Upload-Limit": sfv.serialize_dictionary(members)}

    def response(self, problem: Problem) -> web.Response:
        """The problem document as this version has it."""
        if problem.type not in self.problem_types and problem.type != "about:blank":
            problem.type = "about:blank"
            problem.title = HTTPStatus(problem.status).phrase
        return problem.response()


_PRE_PROBLEMS: frozenset[str] = frozenset()
_V6_PROBLEMS = frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD})
_V7_PROBLEMS = _V6_PROBLEMS | {INCONSISTENT_LENGTH}


def _legacy(version: int, drafts: str, completeness: str, absent_create: bool | None) -> Dialect:
    """Versions 3 to 5: no Upload-Length answered, no Upload-Limit, no problem types, 201s."""
    return Dialect(
        version=version,
        drafts=drafts,
        completeness_field=completeness,
        absent_on_create=absent_create,
        # 3: "the last part of the upload does not have the Upload-Incomplete header";
        # 4 and 5: "complete only if ... received ... with the Upload-Complete header value
        # set to true".
        absent_on_append=completeness == "Upload-Incomplete",
        length_field=False,
        partial_upload=False,
        refused_on_head=("Upload-Offset", completeness),
        refused_on_delete=("Upload-Offset", completeness),
        lifetime_key=None,
        min_size_placeholder=False,
        problem_types=_PRE_PROBLEMS,
        append_status=(201, 201),
        offset_on_errors=True,
        complete_on_errors=False,
        inactive_status=404,
    )


DIALECTS: Mapping[int, Dialect] = {
    # -01: Upload-Incomplete; "complete if and only if ... the Upload-Incomplete header
    # being omitted or set to false".
    3: _legacy(3, "-01", "Upload-Incomplete", True),
    # -02: Upload-Complete, required at creation ("request identification").
    4: _legacy(4, "-02", "Upload-Complete", None),
    # -03: progress 104s and 200 for offset retrieval allowed (neither used here).
    5: _legacy(5, "-03", "Upload-Complete", None),
    # -04/-05: application/partial-upload, problem types, Upload-Limit (``expires``),
    # Upload-Length, OPTIONS.
    6: Dialect(
        version=6,
        drafts="-04, -05",
        completeness_field="Upload-Complete",
        absent_on_create=None,
        absent_on_append=False,
        length_field=True,
        partial_upload=True,
        refused_on_head=("Upload-Offset", "Upload-Complete", "Upload-Length"),
        refused_on_delete=("Upload-Offset", "Upload-Complete"),
        lifetime_key="expires",
        min_size_placeholder=True,
        problem_types=_V6_PROBLEMS,
        append_status=(201, 201),
        offset_on_errors=True,
        complete_on_errors=False,
        inactive_status=404,
    ),
    # -06 to -08: ``max-age``, inconsistent-upload-length, Upload-Complete required on
    # appends and in their responses, 2xx appends (204 / 200 in its examples).
    7: Dialect(
        version=7,
        drafts="-06 to -08",
        completeness_field="Upload-Complete",
        absent_on_create=None,
        absent_on_append=None,
        length_field=True,
        partial_upload=True,
        refused_on_head=(),
        refused_on_delete=(),
        lifetime_key="max-age",
        min_size_placeholder=True,
        problem_types=_V7_PROBLEMS,
        append_status=(204, 200),
        offset_on_errors=False,
        complete_on_errors=True,
    ),
    # -09 on: limits required in 104 and HEAD, Accept-Patch in OPTIONS.
    8: Dialect(
        version=8,
        drafts="-09 on",
        completeness_field="Upload-Complete",
        absent_on_create=None,
        absent_on_append=None,
        length_field=True,
        partial_upload=True,
        refused_on_head=(),
        refused_on_delete=(),
        lifetime_key="max-age",
        min_size_placeholder=False,
        problem_types=_V7_PROBLEMS,
        append_status=(204, 200),
        offset_on_errors=False,
        complete_on_errors=False,
    ),
}
SUPPORTED_VERSIONS = tuple(sorted(DIALECTS))


def dialect_of(request: web.Request) -> Dialect:
    """The dialect of the request's ``Upload-Draft-Interop-Version``, else a 400.

    No 104 is ever sent for a refused request ("MUST NOT send a 104 ... when the interop
    version ... is missing or mismatching").
    """
    dialect = DIALECTS.get(sfv.parse_integer(field(request, INTEROP_HEADER)) or -1)
    if dialect is None:
        listed = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise Problem(
            400,
            f"this server implements Upload-Draft-Interop-Version {listed} "
            "(draft-ietf-httpbis-resumable-upload -01 to the current text) and tus 1.0.0",
            members={"supported-interop-versions": list(SUPPORTED_VERSIONS)},
        )
    return dialect


async def send_104(request: web.Request, dialect: Dialect, headers: Mapping[str, str]) -> None:
    """Send the interim ``104 (Upload Resumption Supported)`` response.

    aiohttp has no API for informational responses; it writes ``100 Continue`` itself by
    writing the raw status line to ``request.writer`` before the response is prepared, and
    this does the same. Only HTTP/1.1 clients get it (HTTP/1.0 knows no 1xx responses).
    Every version: "Server implementations of draft versions ... MUST also send a header
    field Upload-Draft-Interop-Version with the interop version as its value to the 104" --
    the version of the request, which the handler speaks.
    """
    if request.version != HttpVersion11:
        return
    lines = ["HTTP/1.1 104 Upload Resumption Supported"]
    for key, value in {**headers, INTEROP_HEADER: str(dialect.version)}.items():
        if "\r" in value or "\n" in value:
            return
        lines.append(f"{key}: {value}")
    try:
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        return
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    writer = request.writer
    try:
        await writer.write(data)
    except ConnectionError:
        return  # the content read that follows sees the disconnect
    # As aiohttp does after 100 Continue: the final response's byte count starts here.
    writer.output_size = 0


# --- requests: representation metadata (the same in every version) -------------------------

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}")
#: Content types that say nothing about the file (curl's default for --data-binary, ...).
_GENERIC_TYPES = frozenset(
    {"application/octet-stream", "application/x-www-form-urlencoded", PARTIAL_UPLOAD}
)


def representation_metadata(request: web.Request) -> dict[str, bytes]:
    """``filename`` and ``filetype`` from the creation request's representation metadata.

    "metadata MUST be validated and/or sanitized if the server takes its values into
    consideration": the name is reduced to a plain file name, the type to a media type.
    """
    metadata: dict[str, bytes] = {}
    name = _filename(request.headers.get("Content-Disposition"))
    if name:
        metadata["filename"] = name.encode("utf-8")
    ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if _MEDIA_TYPE.fullmatch(ctype) and ctype not in _GENERIC_TYPES:
        metadata["filetype"] = ctype.encode("ascii")
    return metadata


_DISPOSITION_EXT = re.compile(r"(?:^|;)\s*filename\*\s*=\s*([^;]*)", re.IGNORECASE)
_DISPOSITION = re.compile(r'(?:^|;)\s*filename\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', re.IGNORECASE)
_EXT_VALUE = re.compile(r"(utf-8|iso-8859-1)'[^']*'(.*)", re.IGNORECASE)


def _filename(disposition: str | None) -> str | None:
    """The file name of a Content-Disposition (RFC 6266), ``filename*`` preferred."""
    if not disposition or len(disposition) > 2048:
        return None
    name: str | None = None
    ext = _DISPOSITION_EXT.search(disposition)
    if ext is not None:
        m = _EXT_VALUE.fullmatch(ext.group(1).strip())
        if m is not None:
            try:
                name = urllib.parse.unquote(m.group(2), encoding=m.group(1), errors="strict")
            except (UnicodeDecodeError, LookupError):
                name = None
    if name is None:
        plain = _DISPOSITION.search(disposition)
        if plain is not None:
            value = plain.group(1).strip()
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            name = value
    if name is None:
        return None
    # Never a path: the last segment only, without control characters.
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    if name in ("", ".", ".."):
        return None
    return name[:255]
