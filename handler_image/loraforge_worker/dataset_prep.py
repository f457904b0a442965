"""Turn the downloaded dataset.zip into the private, flat folder an engine trains from.

The archive rules (traversal, links, bombs, encryption…) and the caption rule are the ingest's own
(`loraforge.datasets.archive`, `.captions`): one implementation for both sides. The archive stored in
S3 is the user's upload, so entries the ingest rejected one by one (duplicates, images below the
preset's minimum side, pairs with a broken caption…) are still in it.

With the dataset's manifest (`DatasetSource.manifest_url`), the manifest is the one source of truth:
exactly its accepted items are extracted, each checked against the size and sha256 ingest recorded
(a difference means the archive changed after validation: DATASET_CHECKSUM_MISMATCH), and each gets
the manifest's caption. Without it (inputs from before manifests) the archive is extracted whole and
the probes and caption decoding are applied again here.

Every kept image gets a `<stem>.txt` holding its final caption (`final_caption`: trigger word,
`[trigger]`, default caption), because AI-Toolkit reads captions from files and writes caches into
this folder (so it must be private to the run).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from loraforge.contract import TrainingSpec, WorkerErrorCode
from loraforge.datasets.archive import ArchiveLimits, SafeArchive, UnsafeArchive, extract_safely
from loraforge.datasets.captions import CAPTION_SUFFIX, CaptionError, decode_caption, final_caption
from loraforge.datasets.probe import IMAGE_FORMATS, ProbeError, probe_image, probe_video, sniff
from loraforge.models.dataset import DatasetManifest, ManifestItem

from .errors import WorkerFailure

EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "MP4": ".mp4"}
HEAD_BYTES = 64
MAX_MANIFEST_BYTES = ArchiveLimits().max_entries * 32 * 1024
"""Bound on manifest.json: one row per archive entry at most, each under 32 KiB even for a 2,000-character
caption written as JSON `\\u` escapes (ingest's `json.dumps` is ASCII-only)."""
UNREADABLE_ARCHIVE_CODES = frozenset({"NOT_A_ZIP", "TRUNCATED_ARCHIVE", "EMPTY_ARCHIVE"})


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


def _unsafe(exc: UnsafeArchive) -> WorkerFailure:
    code = WorkerErrorCode.DATASET_UNREADABLE if exc.code in UNREADABLE_ARCHIVE_CODES else WorkerErrorCode.DATASET_UNSAFE
    return WorkerFailure(code, f"{exc.code}: {exc.message}")


def load_manifest(path: Path) -> DatasetManifest:
    """The downloaded manifest.json, validated. A file that is not a manifest could not be read: a system failure."""
    try:
        return DatasetManifest.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as exc:
        raise WorkerFailure(WorkerErrorCode.DATASET_DOWNLOAD_FAILED,
                            f"the dataset manifest is not a valid manifest ({str(exc).splitlines()[0]})") from exc


def prepare_dataset(zip_path: Path, workdir: Path, dest: Path, spec: TrainingSpec, *, max_archive_bytes: int,
                    manifest: DatasetManifest | None = None) -> PreparedDataset:
    """Training folder `dest` from `zip_path`: the manifest's accepted items when a manifest is given, else every usable file."""
    if manifest is not None:
        return _prepare_from_manifest(zip_path, dest, spec, manifest, max_archive_bytes=max_archive_bytes)
    return _prepare_by_probing(zip_path, workdir, dest, spec, max_archive_bytes=max_archive_bytes)


def _prepare_from_manifest(zip_path: Path, dest: Path, spec: TrainingSpec, manifest: DatasetManifest, *,
                           max_archive_bytes: int) -> PreparedDataset:
    """Stream exactly the manifest's accepted entries into `dest` (nothing else is ever written), checking each one."""
    if not manifest.accepted:
        raise WorkerFailure(WorkerErrorCode.DATASET_UNREADABLE, "the dataset manifest accepts no images: there is nothing to train on")
    dest.mkdir(parents=True, exist_ok=True)
    used_stems: set[str] = set()
    try:
        with SafeArchive.open(zip_path, archive_limits(max_archive_bytes)) as archive:
            entries = {entry.path: entry for entry in archive.files}
            missing = [item.key for item in manifest.accepted if item.key not in entries]
            if missing:
                raise WorkerFailure(WorkerErrorCode.DATASET_CHECKSUM_MISMATCH,
                                    f"the archive lacks {len(missing)} file(s) its manifest accepted (e.g. {missing[0]!r}): "
                                    "it changed after validation; upload the dataset again")
            for item in sorted(manifest.accepted, key=lambda i: i.key):
                partial = dest / ".partial"
                digest, size, head = hashlib.sha256(), 0, b""
                with partial.open("wb") as out:
                    for chunk in archive.iter_chunks(entries[item.key]):
                        head = head or chunk[:HEAD_BYTES]
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                _check_item(item, size, digest.hexdigest())
                fmt = sniff(head)
                if fmt not in EXTENSIONS:
                    raise WorkerFailure(WorkerErrorCode.DATASET_UNREADABLE, f"{item.key} is not an image or clip the trainer can read")
                stem = _unique_stem(PurePosixPath(item.key).stem, used_stems)
                os.replace(partial, dest / f"{stem}{EXTENSIONS[fmt]}")
                caption = final_caption(item.caption, trigger_word=spec.trigger_word, default_caption=spec.default_caption)
                (dest / f"{stem}{CAPTION_SUFFIX}").write_text(caption, encoding="utf-8")
    except UnsafeArchive as exc:
        raise _unsafe(exc) from exc
    return PreparedDataset(folder=dest, items=len(manifest.accepted),
                           skipped=[f"{rejected.key}: {rejected.reason}" for rejected in manifest.rejected])


def _check_item(item: ManifestItem, size: int, sha256: str) -> None:
    if size != item.size or sha256 != item.sha256.lower():
        raise WorkerFailure(WorkerErrorCode.DATASET_CHECKSUM_MISMATCH,
                            f"{item.key} in the archive ({size} bytes, sha256 {sha256[:12]}…) is not the file ingest validated "
                            f"({item.size} bytes, sha256 {item.sha256[:12]}…): the archive changed after validation")


def _prepare_by_probing(zip_path: Path, workdir: Path, dest: Path, spec: TrainingSpec, *, max_archive_bytes: int) -> PreparedDataset:
    """Extract `zip_path` safely under `workdir`, then move usable media + final captions into `dest`."""
    extract_root = workdir / "extract"
    try:
        files = extract_safely(zip_path, extract_root, archive_limits(max_archive_bytes))
    except UnsafeArchive as exc:
        raise _unsafe(exc) from exc
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
