"""The media subprocess: probe, validate, thumbnail and strip the location of one file.

Run as ``python -I -S worker.py PILLOW_DIR`` by :mod:`tusserver.pipeline.media.step` through
the sandbox (limits set by the parent before the request is read). It imports nothing of
tusserver (a child that loaded the whole server would cost more CPU than the work) and only
the standard library and Pillow; it starts ``ffprobe``/``ffmpeg`` for video and audio, which
inherit its limits (ffmpeg decodes the poster frame and encodes its WebP thumbnails itself).

Request (JSON on standard input)::

    {"path": FILE, "kind": "image" | "av", "mime": MIME, "max_pixels": N (0: none),
     "thumb_dir": DIR or null, "sizes": [256, 1024], "strip_to": FILE or null,
     "ffprobe": PATH, "ffmpeg": PATH, "container": NAME}

Answer (JSON on standard output, exit status 0)::

    {"ok": true, "media": {...}, "thumbnails": {"256": FILE, ...},
     "stripped": FILE or null, "location_found": bool}
    {"ok": false, "reason": "...", "limit": null | "cpu" | "memory" | "crash"}
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

__all__ = [
    "MediaRejected",
    "av_facts",
    "handle",
    "main",
    "strip_jpeg",
    "strip_png",
    "strip_webp",
]

#: EXIF tags: Orientation, and the pointer to the GPS IFD.
ORIENTATION = 0x0112
GPS_IFD = 0x8825
#: Formats Pillow decodes that we probe (others are accepted unprobed).
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"}
WEBP_QUALITY = 80


class MediaRejected(Exception):
    """The file is not valid media of its type: the reason is shown on the file."""

    def __init__(self, reason: str, limit: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit


# --- images ------------------------------------------------------------------------------


def _image(req: dict[str, Any]) -> dict[str, Any]:
    from PIL import Image

    path = req["path"]
    max_pixels = int(req.get("max_pixels") or 0)
    # Opening reads the header only; the declared size is checked below, before decoding
    # (Pillow's own guard would refuse at open with a less precise message).
    Image.MAX_IMAGE_PIXELS = None
    try:
        im = Image.open(path)
    except MemoryError:
        raise
    except Exception as exc:
        raise MediaRejected(f"cannot be decoded as an image: {_short(exc, path)}") from None
    with im:
        fmt = im.format or ""
        pictures: list[int] | None = None
        if fmt == "MPO":
            # A multi-picture JPEG (3D cameras; the large preview many cameras append): a
            # JPEG whose first picture is the one every viewer shows.
            fmt, pictures = "JPEG", _mpo_pictures(im)
        width, height = im.size
        if max_pixels and width * height > max_pixels:
            raise MediaRejected(
                f"the image declares {width} x {height} = {width * height:,} pixels; "
                f"at most {max_pixels:,} are accepted"
            )
        if fmt not in IMAGE_FORMATS:
            raise MediaRejected(f"image format {fmt or 'unknown'} is not supported")
        exif: Mapping[int, Any]
        try:
            exif = im.getexif()
        except Exception:
            exif = {}
        has_gps = GPS_IFD in exif
        try:
            # A damaged orientation (not a number) is no orientation; the GPS still counts.
            orientation = int(exif.get(ORIENTATION, 1) or 1)
        except (TypeError, ValueError):
            orientation = 1
        # A location may be in XMP only (editing tools write it there).
        has_gps = has_gps or _xmp_names_gps(im.info)
        if orientation not in range(1, 9):
            orientation = 1
        sizes = sorted(int(s) for s in req.get("sizes") or ())
        if sizes and fmt == "JPEG":
            # Decode at the smallest DCT scale that still covers the largest thumbnail.
            im.draft("RGB", (max(sizes), max(sizes)))
        try:
            im.load()
        except MemoryError:
            raise
        except Exception as exc:
            raise MediaRejected(f"cannot be decoded: {_short(exc, path)}") from None
        # What is left to turn: Pillow's TIFF plugin applies the orientation itself (its
        # size at open is already the shown one, and load() turns the pixels).
        to_turn = 1 if orientation != 1 and _turned_by_pillow(im) else orientation
        shown_w, shown_h = (height, width) if to_turn in (5, 6, 7, 8) else (width, height)
        media = {
            "kind": "image",
            "format": fmt.lower(),
            "width": shown_w,
            "height": shown_h,
            "orientation": orientation,
        }
        thumbs: dict[str, str] = {}
        if req.get("thumb_dir") and sizes:
            thumbs = _thumbnails(im, to_turn, req["thumb_dir"], sizes)
    stripped = None
    if pictures is not None and req.get("strip_to"):
        # Each picture has its own EXIF (the first one's is all Pillow reads).
        stripped = _strip_mpo(path, pictures, req["strip_to"])
        has_gps = has_gps or stripped is not None
    elif req.get("strip_to") and has_gps:
        stripped = _strip_image(path, fmt, req["strip_to"])
    return {
        "ok": True,
        "media": media,
        "thumbnails": thumbs,
        "stripped": stripped,
        "location_found": has_gps,
    }


def _turned_by_pillow(im: Any) -> bool:
    """Whether loading the image applied its orientation (the tag is then gone)."""
    try:
        return ORIENTATION not in im.getexif()
    except Exception:
        return False


def _mpo_pictures(im: Any) -> list[int]:
    """The offsets of the pictures after the first in a multi-picture JPEG, as its MP index
    gives them (from the MPF header)."""
    try:
        return [int(entry["DataOffset"]) for entry in im.mpinfo[0xB002][1:]]
    except Exception:
        return []


def _thumbnails(im: Any, orientation: int, out_dir: str, sizes: list[int]) -> dict[str, str]:
    """WebP thumbnails, longest side at most each size (never enlarged), upright (EXIF
    orientation), without metadata.

    The decoded image is scaled in place, and turned once small (a thumbnail in a square box
    is the same either way round): no copy of the full image is made, so an image within
    the pixel limit fits the decoder's memory limit. The orientation is the one read from
    the EXIF, applied by a plain transpose (Pillow's exif_transpose rewrites the EXIF, and
    fails on some that it reads).
    """
    from PIL import Image

    sixteen = im.mode.startswith("I;16")
    if sixteen:
        # 16-bit greyscale: scaled as 32-bit integers, made 8-bit once small (a conversion
        # to RGB would clip every value above 255: white).
        im = im.convert("I")
    elif im.mode not in ("RGB", "RGBA", "RGBX", "L", "LA", "CMYK", "I", "F"):
        # Palette and bilevel images scale only by nearest neighbour, some others not at
        # all: colours first.
        im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
    t = Image.Transpose
    method = {
        2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM, 5: t.TRANSPOSE,
        6: t.ROTATE_270, 7: t.TRANSVERSE, 8: t.ROTATE_90,
    }.get(orientation)  # fmt: skip
    out: dict[str, str] = {}
    current = im
    for i, size in enumerate(sorted(sizes, reverse=True)):
        if i:
            current = current.copy()  # the previous thumbnail: small
        current.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
        shown = current.transpose(method) if method is not None else current
        if sixteen:
            shown = shown.point(lambda v: v / 257).convert("L")
        if shown.mode not in ("RGB", "RGBA"):
            shown = shown.convert("RGBA" if "A" in shown.getbands() else "RGB")
        # A fresh image: nothing of the source's info (EXIF, XMP, ICC) can be carried over.
        clean = Image.new(shown.mode, shown.size)
        clean.paste(shown)
        path = os.path.join(out_dir, f"thumb-{size}.webp")
        clean.save(path, "WEBP", quality=WEBP_QUALITY, method=4)
        out[str(size)] = path
    return out


def _xmp_names_gps(info: Mapping[Any, Any]) -> bool:
    """Whether the image's XMP packet (JPEG, WebP: ``xmp``; PNG: its iTXt) has GPS
    properties."""
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = info.get(key)
        if isinstance(value, str):
            value = value.encode("utf-8", "replace")
        if isinstance(value, bytes | bytearray) and b"GPS" in value:
            return True
    return False


def _strip_image(path: str, fmt: str, dest: str) -> str | None:
    with open(path, "rb") as fh:
        data = fh.read()
    if fmt == "JPEG":
        new = strip_jpeg(data)
    elif fmt == "PNG":
        new = strip_png(data)
    elif fmt == "WEBP":
        new = strip_webp(data)
    else:
        return None
    if new == data:
        return None
    with open(dest, "wb") as fh:
        fh.write(new)
    return dest


def _exif_without_gps(raw: bytes) -> bytes | None:
    """TIFF-structured EXIF (no ``Exif\\0\\0`` prefix) with the GPS IFD removed; None when
    it cannot be written back (a damaged tag Pillow reads but cannot write): the caller then
    drops the whole EXIF, since the location must not stay."""
    from PIL import Image

    exif = Image.Exif()
    exif.load(raw)
    if GPS_IFD not in exif:
        return raw  # nothing to take out: not rewritten (Pillow may drop parts it writes)
    del exif[GPS_IFD]
    try:
        out: bytes = exif.tobytes()
    except Exception:
        return None
    return out[6:] if out.startswith(b"Exif\x00\x00") else out


def strip_jpeg(data: bytes) -> bytes:
    """The JPEG without GPS: EXIF rewritten without its GPS IFD, XMP naming GPS dropped.
    The image data is copied untouched (no re-encoding)."""
    if not data.startswith(b"\xff\xd8"):
        return data
    out = bytearray(data[:2])
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        while pos + 4 <= len(data) and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker (T.81 B.1.1.2): not copied
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of scan: the rest is image data
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            out += data[pos : pos + 2]
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            rewritten = _exif_without_gps(body[6:])
            if rewritten is not None:
                new = b"Exif\x00\x00" + rewritten
                out += b"\xff\xe1" + struct.pack(">H", len(new) + 2) + new
        elif marker == 0xE1 and b"GPS" in body and body.startswith(b"http://ns.adobe.com/"):
            pass  # XMP with GPS properties: dropped
        else:
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    out += data[pos:]
    return bytes(out)


def _strip_mpo(path: str, pictures: list[int], dest: str) -> str | None:
    """The multi-picture JPEG without GPS in any of its pictures. Nothing moves (the MP index
    holds each picture's offset and size): an EXIF is rewritten in its own segment and
    padded, a segment that cannot be (XMP naming GPS, an EXIF that would grow) becomes a
    comment of the same length filled with zeros."""
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    original = bytes(data)
    base = _strip_jpeg_in_place(data, 0)
    for offset in pictures:
        start = -1 if base is None else base + offset
        if 0 < start < len(data) - 2 and data[start : start + 2] == b"\xff\xd8":
            _strip_jpeg_in_place(data, start)
    if data == original:
        return None
    with open(dest, "wb") as fh:
        fh.write(data)
    return dest


def _strip_jpeg_in_place(data: bytearray, start: int) -> int | None:
    """Take GPS out of the metadata of the JPEG at ``start`` without moving a byte; returns
    where its MP index counts offsets from (its MPF header), if it has one."""
    mpf = None
    pos = start + 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        while pos + 4 <= len(data) and data[pos + 1] == 0xFF:
            pos += 1
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        body = bytes(data[pos + 4 : end])
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            new = _exif_without_gps(body[6:])
            if new != body[6:]:
                if new is not None and len(new) <= len(body) - 6:
                    data[pos + 10 : end] = new.ljust(len(body) - 6, b"\x00")
                else:
                    data[pos + 1] = 0xFE
                    data[pos + 4 : end] = bytes(len(body))
        elif marker == 0xE1 and b"GPS" in body and body.startswith(b"http://ns.adobe.com/"):
            data[pos + 1] = 0xFE
            data[pos + 4 : end] = bytes(len(body))
        elif marker == 0xE2 and body.startswith(b"MPF\x00") and mpf is None:
            mpf = pos + 8
        pos = end
    return mpf


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def strip_png(data: bytes) -> bytes:
    """The PNG without GPS: its eXIf chunk rewritten, text chunks carrying EXIF/XMP with GPS
    dropped; image chunks copied untouched."""
    sig = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(sig):
        return data
    out = bytearray(sig)
    pos = len(sig)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        whole = data[pos : pos + 12 + length]
        pos += 12 + length
        if kind == b"eXIf":
            rewritten = _exif_without_gps(body)
            if rewritten is not None:
                out += _png_chunk(kind, rewritten)
        elif kind in (b"tEXt", b"zTXt", b"iTXt") and (
            body.startswith((b"Raw profile type exif", b"Raw profile type APP1"))
            or (body.startswith(b"XML:com.adobe.xmp") and b"GPS" in body)
        ):
            pass
        else:
            out += whole
        if kind == b"IEND":
            break
    return bytes(out)


def strip_webp(data: bytes) -> bytes:
    """The WebP without GPS: its EXIF chunk rewritten, an XMP chunk naming GPS dropped."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return data
    chunks = bytearray()
    pos = 12
    dropped_xmp = dropped_exif = False
    while pos + 8 <= len(data):
        kind = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)
        if kind == b"EXIF":
            raw = body[6:] if body.startswith(b"Exif\x00\x00") else body
            rewritten = _exif_without_gps(raw)
            if rewritten is None:
                dropped_exif = True
                continue
            body = rewritten
        elif kind == b"XMP " and b"GPS" in body:
            dropped_xmp = True
            continue
        chunks += kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")
    if chunks[:4] == b"VP8X":
        # The flags of the chunks dropped: XMP (0x04), EXIF (0x08).
        chunks[8] &= ~((0x04 if dropped_xmp else 0) | (0x08 if dropped_exif else 0)) & 0xFF
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + bytes(chunks)


# --- video and audio ----------------------------------------------------------------------


def _run(
    argv: list[str], *, stdout_max: int = 64 * 1024 * 1024, messages: list[str] | None = None
) -> bytes:
    """Run a tool; its failure becomes a rejection, its death by a limit says which (its
    standard error goes to ``messages`` when given)."""
    path = argv[argv.index("-i") + 1] if "-i" in argv else argv[-1]
    spent = _children_cpu()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    spent = _children_cpu() - spent
    if proc.returncode < 0:
        sig = -proc.returncode
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            raise MediaRejected("the decoder exceeded its CPU time limit", "cpu")
        raise MediaRejected(f"the decoder crashed ({signal.Signals(sig).name})", "crash")
    if proc.returncode != 0 and _at_cpu_limit(spent):
        # ffmpeg catches SIGXCPU (the soft limit) and exits by itself (status 255): a
        # limit all the same, never a failure of the file's own.
        raise MediaRejected("the decoder exceeded its CPU time limit", "cpu")
    err = proc.stderr.decode("utf-8", "replace")
    if messages is not None:
        messages.append(err)
    if "Cannot allocate memory" in err or "out of memory" in err.lower():
        raise MediaRejected("the decoder exceeded its memory limit", "memory")
    if proc.returncode != 0:
        raise MediaRejected(_first_line(err, path) or f"exit status {proc.returncode}")
    return proc.stdout[:stdout_max]


def _children_cpu() -> float:
    """CPU seconds used by this process's children that have ended."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _at_cpu_limit(spent: float) -> bool:
    """Whether a child that used ``spent`` CPU seconds reached RLIMIT_CPU (inherited). The
    kernel sends SIGXCPU on its tick-based count, which runs ahead of the precise time
    rusage reports (0.95 s at a limit of 1 s): a tenth is allowed for it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_CPU)
    return soft != resource.RLIM_INFINITY and spent >= soft * 0.9


def _first_line(text: str, path: str = "") -> str:
    """The tool's complaint, without its file path and ``[demuxer @ 0x...]`` prefixes."""
    seen: list[str] = []
    for line in text.splitlines():
        line = re.sub(r"^\[[^\]]*@ ?0x[0-9a-f]+\] ?", "", line.strip())
        if path:
            line = line.replace(path + ": ", "").replace(path, "the file")
        if line and line not in seen:
            seen.append(line)
    return "; ".join(seen[:3])[:300]


def _number(value: Any) -> float | None:
    try:
        n = float(value)
    except (TypeError, ValueError):
        return None
    return n if n == n and n not in (float("inf"), float("-inf")) and n >= 0 else None


def _rate(value: Any) -> float | None:
    try:
        frac = Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None
    return round(float(frac), 3) if frac > 0 else None


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or ():
        if "rotation" in side:
            try:
                return int(float(side["rotation"])) % 360
            except (TypeError, ValueError):
                return 0
    try:
        return int((stream.get("tags") or {}).get("rotate", 0)) % 360
    except (TypeError, ValueError):
        return 0


def av_facts(info: dict[str, Any], container: str) -> dict[str, Any]:
    """The ``media`` object of a video or audio file from ffprobe's JSON (pure, tested)."""
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    video = next(
        (
            s
            for s in streams
            if s.get("codec_type") == "video"
            and not (s.get("disposition") or {}).get("attached_pic")
            and s.get("width")
            and s.get("height")
        ),
        None,
    )
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None and audio is None:
        raise MediaRejected("has no audio or video stream")
    duration = _number(fmt.get("duration"))
    if duration is None:
        duration = _number((video or audio or {}).get("duration"))
    duration = round(duration, 3) if duration is not None else None
    if video is not None:
        width, height = int(video["width"]), int(video["height"])
        # The size it is shown at: pixels that are not square (anamorphic video) stretch.
        sar = _rate(str(video.get("sample_aspect_ratio") or "").replace(":", "/"))
        if sar and sar != 1 and 0.1 <= sar <= 10:  # (the poster's rule: _SQUARE_PIXELS)
            width = max(1, round(width * sar))
        if _rotation(video) in (90, 270):
            width, height = height, width
        return {
            "kind": "video",
            "container": container,
            "width": width,
            "height": height,
            "duration": duration,
            "video_codec": video.get("codec_name"),
            "audio_codec": audio.get("codec_name") if audio else None,
            "frame_rate": _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")),
        }
    assert audio is not None
    sample_rate = audio.get("sample_rate")
    return {
        "kind": "audio",
        "container": container,
        "duration": duration,
        "audio_codec": audio.get("codec_name"),
        "sample_rate": int(sample_rate) if str(sample_rate or "").isdigit() else None,
        "channels": audio.get("channels"),
    }


def _fit(size: int) -> str:
    """ffmpeg's scale filter: longest side at most ``size``, never enlarged, aspect kept,
    and at least 1 px on each side (a 4000 x 2 video is 256 x 1 at 256: ffmpeg's own
    ``force_original_aspect_ratio`` makes it 0 px high, and the filter fails)."""
    factor = f"min(1,{size}/max(iw,ih))"
    return f"scale=w='max(1,round(iw*{factor}))':h='max(1,round(ih*{factor}))'"


def _input(demuxer: str, path: str) -> list[str]:
    """ffmpeg's input options for the upload: the demuxer ffprobe found (never guessed
    again), and only the local file protocol."""
    return ["-protocol_whitelist", "file", "-f", demuxer, "-i", path]


def _is_webp(path: str) -> bool:
    """A WebP with an image in it (ffmpeg may write an empty container when no frame came)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:15] == b"VP8"


#: Stretch non-square pixels to their display aspect (a sample aspect ratio from 1:10 to
#: 10:1; others, or none, are taken as square).
_SQUARE_PIXELS = "scale=w='if(between(sar,0.1,10),iw*sar,iw)':h=ih,setsar=1"


def _poster_thumbnails(
    ffmpeg: str, source: list[str], at: float, out_dir: str, sizes: list[int]
) -> dict[str, str]:
    """The frame at ``at`` seconds, decoded once by ffmpeg and written as a WebP per size
    (each size scaled from the one above it), without metadata.

    ffmpeg encodes the WebPs itself (libwebp, as Pillow does for images): a raw frame through
    a pipe into Pillow cost a Python import, a copy and a second conversion per file."""
    order = sorted(sizes, reverse=True)
    # Square pixels first: an anamorphic video is shown stretched to its display aspect.
    graph, last = [f"[0:v:0]{_SQUARE_PIXELS}[sq]"], "sq"
    outputs: list[str] = []
    files: dict[str, str] = {}
    for i, size in enumerate(order):
        more = i + 1 < len(order)
        split = f",split=2[t{i}][r{i}]" if more else f"[t{i}]"
        graph.append(f"[{last}]{_fit(size)}{split}")
        last = f"r{i}"
        dest = os.path.join(out_dir, f"thumb-{size}.webp")
        outputs += [
            "-map", f"[t{i}]", "-frames:v", "1", "-map_metadata", "-1", "-c:v", "libwebp",
            "-quality", str(WEBP_QUALITY), "-f", "webp", "-y", dest,
        ]  # fmt: skip
        files[str(size)] = dest
    _run(
        [ffmpeg, "-nostdin", "-v", "error", "-threads", "2", "-ss", f"{at:.3f}", *source,
         "-filter_complex", ";".join(graph), *outputs]
    )  # fmt: skip
    if not all(_is_webp(dest) for dest in files.values()):
        if at > 0:
            # No frame at that time (a video track shorter than the file): the first one.
            return _poster_thumbnails(ffmpeg, source, 0.0, out_dir, sizes)
        raise MediaRejected("cannot be decoded: no video frame could be read")
    return files


#: What demuxers say of a file that ends before its index does (mov/mp4: a sample past the
#: end; Matroska/WebM: a cluster cut off).
_CUT_SHORT = ("partial file", "File ended prematurely")


def _read_through(ffmpeg: str, source: list[str]) -> float | None:
    """Read the whole file once (demuxed, not decoded): rejected when it ends before its
    index says (a copy cut short); the time of its last packet."""
    messages: list[str] = []
    try:
        out = _run(
            [ffmpeg, "-nostdin", "-v", "error", *source, "-map", "0:v?", "-map", "0:a?",
             "-c", "copy", "-f", "null", "-progress", "pipe:1", "-"],
            messages=messages,
        )  # fmt: skip
    except MediaRejected as exc:
        if exc.limit is not None:
            raise
        out = b""  # (the poster, or the first seconds, tell whether it decodes)
    if any(cut in text for text in messages for cut in _CUT_SHORT):
        raise MediaRejected("truncated: the file ends before the data its index lists")
    found = re.findall(rb"^out_time_us=(\d+)\s*$", out, re.MULTILINE)
    if not found:
        return None
    return round(int(found[-1]) / 1_000_000, 3) or None


def _location_tags(info: dict[str, Any]) -> bool:
    tags = {k.lower() for k in ((info.get("format") or {}).get("tags") or {})}
    return any("location" in k or k.endswith("xyz") for k in tags)


def _av(req: dict[str, Any]) -> dict[str, Any]:
    path, ffprobe, ffmpeg = req["path"], req["ffprobe"], req["ffmpeg"]
    # ffmpeg picks a demuxer from the content, and some open the files or streams the
    # content names (an HLS playlist that libmagic types as audio): only the demuxers the
    # parent allows (none of those), only local files.
    try:
        raw = _run(
            [ffprobe, "-v", "error", "-protocol_whitelist", "file", "-format_whitelist",
             req.get("demuxers") or "", "-print_format", "json", "-show_format",
             "-show_streams", "--", path]
        )  # fmt: skip
    except MediaRejected as exc:
        if "not on whitelist" in exc.reason:
            raise MediaRejected("cannot be parsed: not a media container accepted here") from None
        raise
    try:
        info = json.loads(raw or b"{}")
    except ValueError:
        raise MediaRejected("cannot be parsed: unreadable ffprobe output") from None
    demuxer = str((info.get("format") or {}).get("format_name") or "").split(",")[0]
    if not demuxer:
        raise MediaRejected("cannot be parsed: no container found")
    source = _input(demuxer, path)
    media = av_facts(info, req.get("container") or "")
    declared = media.get("duration")
    last = _read_through(ffmpeg, source)
    if last is not None and media.get("frame_rate"):
        last = round(last + 1 / float(media["frame_rate"]), 3)  # the last frame's time
    if last is not None and (declared is None or abs(last - declared) > max(0.5, declared / 100)):
        # Not in the header (a streamed WebM, as browsers record it), or a header that says
        # otherwise (it is the uploader's word): the measured one, for the file's facts, its
        # poster time and max_media_duration.
        media["duration"] = last
    duration = media.get("duration") or 0.0
    thumbs: dict[str, str] = {}
    sizes = sorted(int(s) for s in req.get("sizes") or ())
    if media["kind"] == "video":
        at = duration / 10 if duration else 0.0
        if req.get("thumb_dir") and sizes:
            thumbs = _poster_thumbnails(ffmpeg, source, at, req["thumb_dir"], sizes)
        else:
            # Validation only: one frame must decode (the first, if none at that time).
            for when in dict.fromkeys((at, 0.0)):
                frame = _run(
                    [ffmpeg, "-nostdin", "-v", "error", "-threads", "2", "-ss", f"{when:.3f}",
                     *source, "-map", "0:v:0", "-frames:v", "1", "-vf", _fit(64), "-f",
                     "image2pipe", "-c:v", "ppm", "-"]
                )  # fmt: skip
                if frame:
                    break
            else:
                raise MediaRejected("cannot be decoded: no video frame could be read")
    else:
        # The first seconds must decode.
        _run(
            [ffmpeg, "-nostdin", "-v", "error", "-xerror", *source, "-map", "0:a:0", "-t",
             "2", "-f", "null", "-"]
        )  # fmt: skip
    stripped = None
    found = _location_tags(info)
    if req.get("strip_to") and found and req.get("container") in ("mp4", "mov"):
        dest = req["strip_to"]
        _run(
            # The streams a mov/mp4 can hold: a data track (a camera's timecode) cannot be
            # copied into one by ffmpeg's muxer, and goes.
            [ffmpeg, "-nostdin", "-v", "error", *source, "-map", "0:v?", "-map", "0:a?",
             "-map", "0:s?", "-c", "copy", "-map_metadata", "-1", "-f", req["container"],
             "-y", dest]
        )  # fmt: skip
        stripped = dest
    return {
        "ok": True,
        "media": media,
        "thumbnails": thumbs,
        "stripped": stripped,
        "location_found": found,
    }


# --- entry -------------------------------------------------------------------------------


def _short(exc: BaseException, path: str = "") -> str:
    """The exception's first line, without the file's path (Pillow names it: "cannot
    identify image file '/...'"): the reason is shown to the user, the server's
    directories are not their business."""
    text = str(exc).strip() or type(exc).__name__
    if path:
        text = text.replace(f" {path!r}", "").replace(path, "the file")
    return text.splitlines()[0][:300]


def handle(req: dict[str, Any]) -> dict[str, Any]:
    try:
        if req.get("kind") == "image":
            return _image(req)
        return _av(req)
    except MediaRejected as exc:
        return {"ok": False, "reason": exc.reason, "limit": exc.limit}
    except MemoryError:
        return {"ok": False, "reason": "the decoder exceeded its memory limit", "limit": "memory"}


def main() -> int:
    # Run with -I -S (no site-packages: a quicker start); the parent names Pillow's directory.
    sys.path.extend(sys.argv[1:2])
    req = json.loads(sys.stdin.buffer.read() or b"{}")
    answer = handle(req)
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
