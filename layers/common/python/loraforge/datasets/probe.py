"""What a file in a dataset is, by content: magic bytes, then a header-only probe.

Images (PNG, JPEG, WEBP) are probed with Pillow lazily: `Image.open` reads the header only, and the
pixel bound is checked BEFORE anything is decoded, so a 60,000-pixel-wide header costs nothing.
Truncation is found cheaply: PNG `verify()` walks the chunk CRCs without inflating pixels, JPEG is
decoded in draft mode at 1/8 scale, WEBP's RIFF length is compared with the file's. Video clips
(MP4/MOV, for video presets) are probed by walking the ISO-BMFF boxes to the track header.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
VIDEO_FORMATS = ("MP4",)
_UNSUPPORTED_IMAGES = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"8BPS": "PSD"}
_ARCHIVES = {b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\x1f\x8b": "gzip", b"7z\xbc\xaf\x27\x1c": "7z", b"Rar!": "rar",
             b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
HEAD_BYTES = 64


class ProbeError(Exception):
    """The file is not a usable image/clip. `code`: NOT_AN_IMAGE | UNSUPPORTED_IMAGE_FORMAT | NESTED_ARCHIVE |
    TRUNCATED_IMAGE (truncated or corrupt) | IMAGE_TOO_LARGE | TRUNCATED_VIDEO | VIDEO_NOT_SUPPORTED."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PixelLimits:
    max_side: int = 16_384
    max_pixels: int = 80_000_000
    """~8944²: above every trainer's bucket sizes, below Pillow's decompression-bomb error (2 × 89.5 MP)."""


@dataclass
class Probe:
    format: str
    width: int
    height: int
    mode: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_video(self) -> bool:
        return self.format in VIDEO_FORMATS


def sniff(head: bytes) -> str | None:
    """'PNG' | 'JPEG' | 'WEBP' | 'MP4' from the first bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return "MP4"
    return None


def describe_unknown(head: bytes) -> ProbeError:
    """The most useful refusal for content that is not a supported image."""
    for magic, kind in _ARCHIVES.items():
        if head.startswith(magic):
            return ProbeError("NESTED_ARCHIVE", f"this is a {kind} archive inside the archive; put the images in the top-level zip")
    for magic, kind in _UNSUPPORTED_IMAGES.items():
        if head.startswith(magic):
            return ProbeError("UNSUPPORTED_IMAGE_FORMAT", f"{kind} images are not supported; convert it to PNG, JPEG or WEBP")
    return ProbeError("NOT_AN_IMAGE", "the content is not a PNG, JPEG or WEBP image (whatever the file name says)")


def _check_pixels(width: int, height: int, limits: PixelLimits) -> None:
    if width <= 0 or height <= 0:
        raise ProbeError("NOT_AN_IMAGE", f"the header says {width}×{height} pixels")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise ProbeError("IMAGE_TOO_LARGE", f"{width}×{height} pixels is above the limit ({limits.max_side} px a side, "
                         f"{limits.max_pixels // 1_000_000} MP); downscale it")


def probe_image(fp: BinaryIO, fmt: str, size: int, limits: PixelLimits | None = None) -> Probe:
    """Header probe + cheap integrity check of one image. `fp` is seekable and positioned anywhere."""
    from PIL import Image, UnidentifiedImageError

    limits = limits or PixelLimits()
    fp.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower bound is checked next
            img = Image.open(fp, formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ProbeError("IMAGE_TOO_LARGE", f"the image header declares too many pixels ({exc})") from exc
    except (UnidentifiedImageError, SyntaxError, ValueError, struct.error, OSError, EOFError) as exc:
        # The magic bytes said `fmt`, so this is a damaged image rather than something else renamed.
        raise ProbeError("TRUNCATED_IMAGE", f"the {fmt} file starts like an image but its header is truncated or corrupt ({exc}); "
                         "export it again") from exc
    with img:
        width, height = img.size
        mode = img.mode
        _check_pixels(width, height, limits)
        notes = ["CMYK_CONVERTED"] if mode == "CMYK" else []
        try:
            if fmt == "PNG":
                img.verify()  # chunk CRCs through IEND; no pixel inflation
            elif fmt == "JPEG":
                img.draft(None, (max(1, width // 8), max(1, height // 8)))  # DCT scaling: decode at 1/8 size
                img.load()
        except (SyntaxError, ValueError, struct.error, OSError, EOFError) as exc:
            raise ProbeError("TRUNCATED_IMAGE", f"the {fmt} data is truncated or corrupt ({exc}); export the image again") from exc
    if fmt == "WEBP":
        fp.seek(4)
        (riff_length,) = struct.unpack("<I", fp.read(4))
        if riff_length + 8 > size:
            raise ProbeError("TRUNCATED_IMAGE", f"the WEBP file is {size} bytes but its header says {riff_length + 8}; export it again")
    return Probe(format=fmt, width=width, height=height, mode=mode, notes=notes)


_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def probe_video(fp: BinaryIO, size: int, limits: PixelLimits | None = None) -> Probe:
    """Width/height of the first visual track of an MP4/MOV (ISO-BMFF), reading box headers only."""
    limits = limits or PixelLimits()

    def walk(start: int, end: int, depth: int) -> tuple[int, int] | None:
        pos = start
        while pos + 8 <= end:
            fp.seek(pos)
            header = fp.read(8)
            if len(header) < 8:
                raise ProbeError("TRUNCATED_VIDEO", "the clip ends inside a box header; export it again")
            box_size, box_type = struct.unpack(">I4s", header)
            header_len = 8
            if box_size == 1:
                box_size = struct.unpack(">Q", fp.read(8))[0]
                header_len = 16
            elif box_size == 0:
                box_size = end - pos
            if box_size < header_len or pos + box_size > end:
                raise ProbeError("TRUNCATED_VIDEO", f"box '{box_type.decode('latin-1')}' runs past the end of the clip; export it again")
            if box_type == b"tkhd":
                fp.seek(pos + header_len)
                version = fp.read(1)[0]
                body = 92 if version == 1 else 80  # tkhd v1 uses 64-bit times
                fp.seek(pos + header_len + body - 8 + 4)
                width_fx, height_fx = struct.unpack(">II", fp.read(8))
                if width_fx and height_fx:
                    return width_fx >> 16, height_fx >> 16
            elif box_type in _CONTAINER_BOXES and depth < 8:
                found = walk(pos + header_len, pos + box_size, depth + 1)
                if found:
                    return found
            pos += box_size
        return None

    try:
        dims = walk(0, size, 0)
    except (struct.error, IndexError) as exc:
        raise ProbeError("TRUNCATED_VIDEO", f"the clip's boxes cannot be read ({exc})") from exc
    if dims is None:
        raise ProbeError("NOT_AN_IMAGE", "the MP4/MOV holds no video track")
    _check_pixels(*dims, limits)
    return Probe(format="MP4", width=dims[0], height=dims[1])
