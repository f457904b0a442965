"""Turn the downloaded dataset.zip into the private, flat folder an engine trains from.

The archive rules (traversal, links, bombs, encryption…) and the caption rule are the ingest's own
(`loraforge.datasets.archive`, `.captions`, `.probe`): one implementation for both sides. The
archive stored in S3 is the user's upload, so entries the ingest rejected one by one are still in
it; they are skipped here again by the same probes. Every kept image gets a `<stem>.txt` holding
its final caption (trigger word, `[trigger]`, default caption applied), because AI-Toolkit reads
captions from files and writes caches into this folder (so it must be private to the run).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from loraforge.contract import TrainingSpec, WorkerErrorCode
from loraforge.datasets.archive import ArchiveLimits, UnsafeArchive, extract_safely
from loraforge.datasets.captions import CAPTION_SUFFIX, CaptionError, decode_caption, final_caption
from loraforge.datasets.probe import IMAGE_FORMATS, ProbeError, probe_image, probe_video, sniff

from .errors import WorkerFailure

EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "MP4": ".mp4"}
HEAD_BYTES = 64


@dataclass
class PreparedDataset:
    folder: Path
    items: int
    skipped: list[str] = field(default_factory=list)
    """`<path>: <code>` for every file that was not used (not an image, corrupt…)."""


def archive_limits(max_archive_bytes: int) -> ArchiveLimits:
    return ArchiveLimits(max_archive_bytes=max_archive_bytes)


def _probe(path: Path, modality: str) -> str | None:
    """The media format if the file is usable training data, else raises ProbeError / returns None."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        fmt = sniff(fh.read(HEAD_BYTES))
        if fmt in IMAGE_FORMATS:
            probe_image(fh, fmt, size)
            return fmt
        if fmt == "MP4" and modality == "video":
            probe_video(fh, size)
            return fmt
    return None


def _caption_for(image: Path) -> tuple[str, str | None]:
    """The raw caption text next to an extracted image ("" when absent) and a problem code, if any."""
    sidecar = image.with_suffix(CAPTION_SUFFIX)
    if not sidecar.is_file():
        return "", None
    try:
        return decode_caption(sidecar.read_bytes()), None
    except CaptionError as exc:
        return "", exc.code


def prepare_dataset(zip_path: Path, workdir: Path, dest: Path, spec: TrainingSpec, *, max_archive_bytes: int) -> PreparedDataset:
    """Extract `zip_path` safely under `workdir`, then move usable media + final captions into `dest`."""
    extract_root = workdir / "extract"
    try:
        files = extract_safely(zip_path, extract_root, archive_limits(max_archive_bytes))
    except UnsafeArchive as exc:
        code = WorkerErrorCode.DATASET_UNREADABLE if exc.code in ("NOT_A_ZIP", "TRUNCATED_ARCHIVE", "EMPTY_ARCHIVE") \
            else WorkerErrorCode.DATASET_UNSAFE
        raise WorkerFailure(code, f"{exc.code}: {exc.message}") from exc
    dest.mkdir(parents=True, exist_ok=True)
    used_stems: set[str] = set()
    skipped: list[str] = []
    count = 0
    for path in sorted(files):
        if path.suffix.lower() == CAPTION_SUFFIX or path.name == "loraforge.yaml":
            continue
        relative = path.relative_to(extract_root).as_posix()
        try:
            fmt = _probe(path, spec.modality)
        except ProbeError as exc:
            skipped.append(f"{relative}: {exc.code}")
            continue
        if fmt is None:
            skipped.append(f"{relative}: NOT_TRAINING_MEDIA")
            continue
        raw_caption, caption_problem = _caption_for(path)
        if caption_problem:
            skipped.append(f"{relative}.txt: {caption_problem} (default caption used)")
        caption = final_caption(raw_caption, trigger_word=spec.trigger_word, default_caption=spec.default_caption)
        stem = _unique_stem(path.stem, used_stems)
        target = dest / f"{stem}{EXTENSIONS[fmt]}"
        os.replace(path, target)
        (dest / f"{stem}{CAPTION_SUFFIX}").write_text(caption, encoding="utf-8")
        count += 1
    shutil.rmtree(extract_root, ignore_errors=True)
    if count == 0:
        detail = "; ".join(skipped[:5]) or "the archive holds no images"
        raise WorkerFailure(WorkerErrorCode.DATASET_UNREADABLE, f"no usable training images in the dataset ({detail})")
    return PreparedDataset(folder=dest, items=count, skipped=skipped)


def _unique_stem(stem: str, used: set[str]) -> str:
    """Flattening folders can collide (`a/1.png`, `b/1.png`); captions pair by stem, so stems must be unique."""
    clean = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).strip(".") or "image"
    candidate, n = clean, 1
    while candidate.lower() in used:
        n += 1
        candidate = f"{clean}_{n}"
    used.add(candidate.lower())
    return candidate
