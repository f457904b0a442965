"""Validating an opened archive: every entry streamed once, one image in flight at a time.

Each media entry is inflated chunk by chunk into a spooled scratch file (in memory up to 16 MiB,
on disk beyond) while its sha256 is computed, then probed (header + cheap integrity check). Nothing
else is kept but the manifest rows, so memory does not grow with the archive.

Item-level outcomes (the item is listed in `rejected`, the dataset may still be ready):
NOT_AN_IMAGE, UNSUPPORTED_FILE, UNSUPPORTED_IMAGE_FORMAT, NESTED_ARCHIVE, TRUNCATED_IMAGE,
TRUNCATED_VIDEO, VIDEO_NOT_SUPPORTED, IMAGE_TOO_SMALL, IMAGE_TOO_LARGE, DUPLICATE_IMAGE,
DUPLICATE_ENTRY_NAME, UNSUPPORTED_COMPRESSION, CAPTION_NOT_UTF8, CAPTION_TOO_LONG,
CAPTION_CONTROL_CHARACTERS (the image of a rejected caption is left out too, with the same code),
CAPTION_WITHOUT_IMAGE. Notes on accepted items: CMYK_CONVERTED, DEFAULT_CAPTION,
BELOW_RECOMMENDED_RESOLUTION. Dataset-level errors: NO_IMAGES, TOO_FEW_IMAGES, and the archive-level
codes of `archive.UnsafeArchive`.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ..models.dataset import DatasetError, DatasetManifest, DatasetStats, ManifestItem, RejectedItem
from .archive import ArchiveEntry, SafeArchive, UnsafeArchive
from .captions import CAPTION_SUFFIX, CaptionError, decode_caption
from .probe import HEAD_BYTES, Probe, ProbeError, describe_unknown, probe_image, probe_video, sniff
from .rules import ValidationRules

MEDIA_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".mp4", ".mov", ".m4v"})
SPOOL_BYTES = 16 * 1024**2
MAX_WARNING_EXAMPLES = 3


@dataclass
class ValidationReport:
    accepted: list[ManifestItem] = field(default_factory=list)
    rejected: list[RejectedItem] = field(default_factory=list)
    errors: list[DatasetError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: DatasetStats = field(default_factory=DatasetStats)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def error_codes(self) -> list[str]:
        return [e.code for e in self.errors]

    @classmethod
    def refused(cls, code: str, message: str) -> ValidationReport:
        """The whole archive is refused (UnsafeArchive, a drop config error…): no item is listed as accepted."""
        return cls(errors=[DatasetError(code=code, message=message)])

    def manifest(self, *, dataset_id: str, archive_key: str, archive_sha256: str | None, archive_size: int | None) -> DatasetManifest:
        return DatasetManifest(
            dataset_id=dataset_id, archive_key=archive_key, archive_sha256=archive_sha256, archive_size=archive_size,
            accepted=self.accepted, rejected=self.rejected, warnings=self.warnings, errors=self.error_codes,
        )


def _stem(path: str) -> str:
    p = PurePosixPath(path)
    return str(p.with_suffix("")) if p.suffix else path


@dataclass
class _Media:
    entry: ArchiveEntry
    probe: Probe
    sha256: str


class _Validator:
    def __init__(self, archive: SafeArchive, rules: ValidationRules, skip: frozenset[str]) -> None:
        self.archive = archive
        self.rules = rules
        self.skip = skip
        self.report = ValidationReport()
        self.seen_hashes: dict[str, str] = {}
        self.media_candidates = 0

    def reject(self, key: str, code: str, message: str) -> None:
        self.report.rejected.append(RejectedItem(key=key, reason=code, message=message))

    def run(self) -> ValidationReport:
        for entry in self.archive.rejected:
            self.reject(entry.path, entry.code or "REJECTED", entry.message or "not used")
        files = [e for e in self.archive.files if e.path not in self.skip]
        captions = {_stem(e.path): e for e in files if e.suffix == CAPTION_SUFFIX}
        media: list[_Media] = []
        for entry in files:
            if entry.suffix == CAPTION_SUFFIX:
                continue
            self.media_candidates += 1
            found = self._probe(entry)
            if found is not None:
                media.append(found)
        self._attach_captions(media, captions)
        other_stems = {_stem(e.path) for e in self.archive.entries if e.suffix != CAPTION_SUFFIX}
        for stem, entry in captions.items():
            if stem not in other_stems:
                self.reject(entry.path, "CAPTION_WITHOUT_IMAGE",
                            f"no image named {PurePosixPath(stem).name}.png/.jpg/.webp sits next to this caption; it is not used")
        self._finish()
        return self.report

    def _probe(self, entry: ArchiveEntry) -> _Media | None:
        known_suffix = entry.suffix in MEDIA_SUFFIXES
        chunks = self.archive.iter_chunks(entry)
        digest = hashlib.sha256()
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            first = next(chunks, b"")
            fmt = sniff(first[:HEAD_BYTES])
            if fmt is None or (fmt == "MP4" and self.rules.modality != "video"):
                chunks.close()  # the rest of a refused file is never inflated
                if fmt == "MP4":
                    error = ProbeError("VIDEO_NOT_SUPPORTED", f"preset '{self.rules.profile}' trains on images; clips are used by video presets")
                elif known_suffix or describe_unknown(first).code != "NOT_AN_IMAGE":
                    error = describe_unknown(first[:HEAD_BYTES])
                else:
                    error = ProbeError("UNSUPPORTED_FILE", "only images (.png .jpg .jpeg .webp), clips for video presets (.mp4 .mov) "
                                                          "and .txt captions are used")
                self.reject(entry.path, error.code, error.message)
                return None
            digest.update(first)
            spool.write(first)
            for chunk in chunks:
                digest.update(chunk)
                spool.write(chunk)
            try:
                probe = probe_video(spool, entry.size, self.rules.pixel_limits) if fmt == "MP4" else \
                    probe_image(spool, fmt, entry.size, self.rules.pixel_limits)
            except ProbeError as exc:
                self.reject(entry.path, exc.code, exc.message)
                return None
        sha = digest.hexdigest()
        if min(probe.width, probe.height) < self.rules.min_side:
            self.reject(entry.path, "IMAGE_TOO_SMALL", f"{probe.width}×{probe.height} px; preset '{self.rules.profile}' needs at least "
                                                       f"{self.rules.min_side} px on the shorter side")
            return None
        if sha in self.seen_hashes:
            self.reject(entry.path, "DUPLICATE_IMAGE", f"same content as {self.seen_hashes[sha]}; the copy is left out")
            return None
        self.seen_hashes[sha] = entry.path
        if self.rules.recommended_resolution and min(probe.width, probe.height) < self.rules.recommended_resolution:
            probe.notes.append("BELOW_RECOMMENDED_RESOLUTION")
        return _Media(entry=entry, probe=probe, sha256=sha)

    def _attach_captions(self, media: list[_Media], captions: dict[str, ArchiveEntry]) -> None:
        decoded: dict[str, str | CaptionError] = {}
        for item in media:
            stem = _stem(item.entry.path)
            caption_entry = captions.get(stem)
            caption, source, notes = "", "default", list(item.probe.notes)
            if caption_entry is not None:
                if stem not in decoded:
                    decoded[stem] = self._read_caption(caption_entry)
                result = decoded[stem]
                if isinstance(result, CaptionError):
                    self.reject(item.entry.path, result.code, f"its caption {caption_entry.path} was rejected ({result.message}); "
                                                              "the pair is left out")
                    continue
                caption, source = result, "file" if result else "default"
            if source == "default":
                notes.append("DEFAULT_CAPTION")
            self.report.accepted.append(ManifestItem(
                key=item.entry.path, size=item.entry.size, sha256=item.sha256, width=item.probe.width, height=item.probe.height,
                caption=caption, caption_source=source, notes=notes,
            ))

    def _read_caption(self, entry: ArchiveEntry) -> str | CaptionError:
        limit = 4 * self.rules.max_caption_chars
        data = self.archive.read_small(entry, limit)
        try:
            if data is None:
                raise CaptionError("CAPTION_TOO_LONG", f"the caption file is {entry.size} bytes; captions are limited to "
                                                       f"{self.rules.max_caption_chars} characters")
            return decode_caption(data, max_chars=self.rules.max_caption_chars)
        except CaptionError as exc:
            self.reject(entry.path, exc.code, exc.message)
            return exc

    def _finish(self) -> None:
        report, rules = self.report, self.rules
        report.accepted.sort(key=lambda i: i.key)
        accepted = report.accepted
        count = len(accepted)
        report.stats = DatasetStats(
            images=count, rejected=len(report.rejected), total_bytes=sum(i.size for i in accepted),
            min_side=min((min(i.width, i.height) for i in accepted), default=None),
            max_side=max((max(i.width, i.height) for i in accepted), default=None),
            captioned=sum(1 for i in accepted if i.caption_source == "file"),
        )
        if count == 0:
            message = (f"none of the {self.media_candidates} files could be used (see rejected)" if self.media_candidates
                       else "the archive holds no images, only captions or other files")
            report.errors.append(DatasetError(code="NO_IMAGES", message=f"{message}; add PNG, JPEG or WEBP images"))
        elif count < rules.min_images:
            report.errors.append(DatasetError(code="TOO_FEW_IMAGES", message=f"{count} usable images; preset '{rules.profile}' needs at "
                                                                            f"least {rules.min_images} (recommended {rules.recommended_images})"))
        elif count < rules.recommended_images:
            report.warnings.append(f"FEWER_THAN_RECOMMENDED_IMAGES: {count} images; preset '{rules.profile}' recommends "
                                   f"{rules.recommended_images} or more")
        notes = Counter(note for item in accepted for note in item.notes)
        explain = {
            "BELOW_RECOMMENDED_RESOLUTION": f"shorter side below {rules.recommended_resolution} px, the preset's training resolution",
            "CMYK_CONVERTED": "CMYK JPEGs; the trainer converts them to RGB, colours may shift",
            "DEFAULT_CAPTION": "images have no caption file; they train with the default caption (the trigger word, if any)",
        }
        for note, text in explain.items():
            if notes[note]:
                examples = ", ".join([i.key for i in accepted if note in i.notes][:MAX_WARNING_EXAMPLES])
                report.warnings.append(f"{note}: {notes[note]} {text} (e.g. {examples})")
        if report.rejected and report.ok:
            codes = Counter(r.reason for r in report.rejected)
            summary = ", ".join(f"{n}× {code}" for code, n in sorted(codes.items()))
            report.warnings.append(f"REJECTED_ITEMS: {len(report.rejected)} files were left out ({summary}); the manifest lists each")


def validate_archive(archive: SafeArchive, rules: ValidationRules, *, skip: frozenset[str] = frozenset()) -> ValidationReport:
    """Validate every entry of `archive` against `rules`; `skip` names entries that are not data (loraforge.yaml).

    Never raises for bad content: archive-level problems found while inflating become a refused report.
    """
    try:
        return _Validator(archive, rules, skip).run()
    except UnsafeArchive as exc:
        return ValidationReport.refused(exc.code, exc.message)
