"""Ingest validation benchmarks (run by `make perf`; figures are printed).

1. Throughput: 200 PNG images of 1024×1024 in a deflated zip, validated on one core (images/s, MB/s of image data).
2. Memory: peak RSS of a validation child process for a ~1 GB archive versus a ~50 MB one. Validation streams
   one entry at a time, so the peak must not grow with the archive (asserted: within 1.25× and +40 MB).

The archives are built once per run in a temp dir. Images are "duplicated but distinct": one encoded PNG
with a different tEXt chunk per copy, so every entry has its own sha256 (no DUPLICATE_IMAGE) while building
stays cheap. PNG validation never inflates pixels (header + chunk CRCs), so this measures what ingest does.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

THROUGHPUT_IMAGES = 200
SMALL_ARCHIVE_BYTES = 50 * 1024**2
BIG_ARCHIVE_BYTES = 1024**3
RSS_RATIO_TARGET = 1.25
RSS_SLACK_MB = 40

CHILD = r"""
import json, os, resource, sys, time
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
from loraforge.datasets.archive import ArchiveLimits, SafeArchive
from loraforge.datasets.rules import rules_for_preset
from loraforge.datasets.validate import validate_archive

path = sys.argv[1]
limits = ArchiveLimits(max_archive_bytes=4 * 1024**3, max_total_uncompressed_bytes=8 * 1024**3)
start = time.perf_counter()
with SafeArchive.open(path, limits) as archive:
    report = validate_archive(archive, rules_for_preset("tiny-sd"))
seconds = time.perf_counter() - start


def peak_rss_kb() -> int:
    # VmHWM is the peak of this process's own address space (new at exec). ru_maxrss is not: Linux carries it across
    # exec, so a child forked from a large pytest process would report the parent's size.
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


print(json.dumps({"seconds": seconds, "images": report.stats.images, "bytes": report.stats.total_bytes,
                  "errors": report.error_codes, "rejected": len(report.rejected),
                  "max_rss_kb": peak_rss_kb()}))
"""


def photo_like_png(size: int = 1024) -> bytes:
    """A 1024×1024 RGB PNG with smooth gradients and grain: compresses like a photo (~1–2 MB), not like a flat fill."""
    grain = Image.effect_noise((size, size), 24)
    red = Image.linear_gradient("L").resize((size, size))
    green = red.rotate(90)
    blue = Image.blend(grain, red.rotate(45), 0.5)
    out = io.BytesIO()
    Image.merge("RGB", (Image.blend(red, grain, 0.3), Image.blend(green, grain, 0.3), blue)).save(out, format="PNG", compress_level=6)
    return out.getvalue()


def distinct_copy(png: bytes, index: int) -> bytes:
    """The same pixels with a tEXt chunk naming the copy: a different file (and sha256) for free."""
    text = b"Comment\x00copy " + str(index).encode()
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    ihdr_end = 8 + 25
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def build_archive(path: Path, png: bytes, *, count: int | None = None, target_bytes: int | None = None,
                  compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression, compresslevel=1 if compression == zipfile.ZIP_DEFLATED else None) as zf:
        index = 0
        while (count is not None and index < count) or (target_bytes is not None and zf.fp.tell() < target_bytes):
            zf.writestr(f"set/img_{index:05d}.png", distinct_copy(png, index))
            zf.writestr(f"set/img_{index:05d}.txt", f"a photo of [trigger], copy {index}")
            index += 1
    return path


def validate_in_child(path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env, timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def png() -> bytes:
    return photo_like_png()


def test_validation_throughput_200_png_1024(tmp_path_factory: pytest.TempPathFactory, png: bytes) -> None:
    path = build_archive(tmp_path_factory.mktemp("perf") / "throughput.zip", png, count=THROUGHPUT_IMAGES,
                         compression=zipfile.ZIP_DEFLATED)
    result = validate_in_child(path)
    assert result["images"] == THROUGHPUT_IMAGES and result["errors"] == [] and result["rejected"] == 0
    mb = result["bytes"] / 1024**2
    print(f"\n[ingest perf] {THROUGHPUT_IMAGES} PNG 1024x1024 ({len(png) / 1024**2:.2f} MB each, {mb:.0f} MB of images, "
          f"zip {path.stat().st_size / 1024**2:.0f} MB deflated): {result['seconds']:.2f} s on one core -> "
          f"{THROUGHPUT_IMAGES / result['seconds']:.1f} images/s, {mb / result['seconds']:.1f} MB/s; "
          f"peak RSS {result['max_rss_kb'] / 1024:.0f} MB")


def test_peak_memory_does_not_grow_with_archive_size(tmp_path_factory: pytest.TempPathFactory, png: bytes) -> None:
    folder = tmp_path_factory.mktemp("perf-rss")
    small = build_archive(folder / "small.zip", png, target_bytes=SMALL_ARCHIVE_BYTES)
    small_result = validate_in_child(small)
    small.unlink()
    big = build_archive(folder / "big.zip", png, target_bytes=BIG_ARCHIVE_BYTES)
    big_size = big.stat().st_size
    big_result = validate_in_child(big)
    big.unlink()
    small_mb, big_mb = small_result["max_rss_kb"] / 1024, big_result["max_rss_kb"] / 1024
    print(f"\n[ingest perf] peak RSS of validation: {SMALL_ARCHIVE_BYTES / 1024**2:.0f} MB archive ({small_result['images']} images) "
          f"-> {small_mb:.0f} MB; {big_size / 1024**3:.2f} GB archive ({big_result['images']} images, "
          f"{big_result['seconds']:.1f} s, {big_result['bytes'] / 1024**2 / big_result['seconds']:.0f} MB/s) -> {big_mb:.0f} MB; "
          f"ratio {big_mb / small_mb:.2f}")
    assert big_result["errors"] == [] and big_result["images"] > 10 * small_result["images"]
    assert big_mb <= small_mb * RSS_RATIO_TARGET and big_mb - small_mb <= RSS_SLACK_MB
