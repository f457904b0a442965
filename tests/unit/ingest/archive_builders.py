"""Builders for the dataset archives the ingest tests feed the service: real images made with Pillow,
real zips made with zipfile, and the hostile variants (lying headers, symlinks, encrypted flags, bombs)
made by patching bytes the way attackers do. Small on purpose: 64 px images keep the tests fast."""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterable

from PIL import Image

ZipEntry = tuple[str | zipfile.ZipInfo, bytes]


def image_bytes(index: int, *, size: tuple[int, int] = (64, 64), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A distinct image per `index` (different colour and a marker pixel), so no two are duplicates."""
    colour = ((index * 53) % 256, (index * 97 + 40) % 256, (index * 151 + 80) % 256)
    if mode == "CMYK":
        colour = (*colour, (index * 31) % 256)
    img = Image.new(mode, size, colour if mode in ("RGB", "CMYK") else index % 256)
    img.putpixel((index % size[0], (index // size[0]) % size[1]), (255,) * len(img.getbands()))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def noisy_png(size: int = 64, seed: int = 1) -> bytes:
    """A PNG whose pixel data does not compress away (for truncation tests: the cut lands inside IDAT)."""
    img = Image.frombytes("RGB", (size, size), _pseudo_random(size * size * 3, seed))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def noisy_jpeg(size: int = 128, seed: int = 2) -> bytes:
    img = Image.frombytes("RGB", (size, size), _pseudo_random(size * size * 3, seed))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _pseudo_random(n: int, seed: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += zlib.crc32(struct.pack(">II", seed, counter)).to_bytes(4, "big")
        counter += 1
    return bytes(out[:n])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares `width`×`height` with a token IDAT: what a decompression-bomb header looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def mp4_bytes(width: int, height: int) -> bytes:
    """A minimal ISO-BMFF file (ftyp + moov/trak/tkhd) declaring one video track of `width`×`height`."""
    def box(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", 8 + len(payload)) + kind + payload

    tkhd = b"\x00\x00\x00\x07" + b"\x00" * 72 + struct.pack(">II", width << 16, height << 16)
    return box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41") + box(b"moov", box(b"trak", box(b"tkhd", tkhd)))


def dataset_entries(count: int, *, start: int = 0, captions: bool = True, fmt: str = "PNG", folder: str = "") -> list[ZipEntry]:
    ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]
    entries: list[ZipEntry] = []
    for i in range(start, start + count):
        entries.append((f"{folder}img_{i:03d}.{ext}", image_bytes(i, fmt=fmt)))
        if captions:
            entries.append((f"{folder}img_{i:03d}.txt", f"a photo of [trigger] number {i}".encode()))
    return entries


def build_zip(entries: Iterable[ZipEntry], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", compression) as zf:
        warnings.simplefilter("ignore", UserWarning)  # duplicate names are one of the hostile cases
        for name, data in entries:
            zf.writestr(name, data)
    return out.getvalue()


def symlink_entry(name: str, target: str) -> ZipEntry:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def with_flag_bits(zip_bytes: bytes, name: str, bits: int) -> bytes:
    """Set general-purpose flag bits of one entry in both its local header and its central-directory record
    (zipfile resets flag_bits when writing, so an 'encrypted' entry has to be patched in)."""
    data = bytearray(zip_bytes)
    encoded = name.encode()
    for signature, flag_offset, name_len_offset, header_len in ((b"PK\x03\x04", 6, 26, 30), (b"PK\x01\x02", 8, 28, 46)):
        pos = data.find(signature)
        while pos != -1:
            name_len = struct.unpack_from("<H", data, pos + name_len_offset)[0]
            if bytes(data[pos + header_len:pos + header_len + name_len]) == encoded:
                flags = struct.unpack_from("<H", data, pos + flag_offset)[0]
                struct.pack_into("<H", data, pos + flag_offset, flags | bits)
            pos = data.find(signature, pos + 4)
    return bytes(data)


def with_declared_size(zip_bytes: bytes, name: str, file_size: int) -> bytes:
    """Make the central directory lie about one entry's inflated size (the local header keeps the truth)."""
    data = bytearray(zip_bytes)
    encoded = name.encode()
    pos = data.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if bytes(data[pos + 46:pos + 46 + name_len]) == encoded:
            struct.pack_into("<I", data, pos + 24, file_size)
        pos = data.find(b"PK\x01\x02", pos + 4)
    return bytes(data)


def compressible(n: int, ratio: int, seed: int = 7) -> bytes:
    """`n` bytes that deflate roughly `ratio`:1 (one pseudo-random byte, then ratio-1 zeros, repeated)."""
    noise = _pseudo_random(n // ratio + 1, seed)
    out = bytearray(n)
    for i in range(0, n, ratio):
        out[i] = noise[i // ratio]
    return bytes(out)
