"""Reading untrusted zip archives safely: ONE set of rules for ingest validation and the worker's extract.

Pure stdlib + pydantic (the worker image imports this module).

What is refused, and how
- Archive-level problems raise `UnsafeArchive(code, message)`: the whole dataset is invalid, because an
  archive that carries them is hostile or broken and partial use of it is not worth the risk:
  NOT_A_ZIP, TRUNCATED_ARCHIVE, ARCHIVE_TOO_LARGE, EMPTY_ARCHIVE, TOO_MANY_ENTRIES, ZIP_BOMB_SIZE,
  ZIP_BOMB_RATIO, PATH_TRAVERSAL, ABSOLUTE_PATH, INVALID_ENTRY_NAME, SYMLINK, SPECIAL_FILE, ENCRYPTED_ENTRY.
- Entry-level problems reject only that entry (it is never read or extracted, and it is listed with
  its reason): NESTED_ARCHIVE, UNSUPPORTED_COMPRESSION, DUPLICATE_ENTRY_NAME.
- Hidden and system entries (`__MACOSX/`, dotfiles such as `.DS_Store` or `._photo.png`,
  `Thumbs.db`, `desktop.ini`) and folders are ignored silently.

Limits are checked twice: first against the sizes the central directory declares (cheap, before any
byte is inflated), then again while inflating, on the bytes actually produced. A header that lies
about an entry's size cannot make a reader produce more than the declared size, the per-entry limit,
the archive total or the compression ratio allows.
"""

from __future__ import annotations

import lzma
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field

MiB = 1024**2
GiB = 1024**3

ARCHIVE_SUFFIXES = frozenset({".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".lz", ".lzma", ".cab", ".jar"})
IGNORED_FOLDERS = frozenset({"__macosx"})
IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})
SUPPORTED_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# zipfile raises NotImplementedError for a compression method it cannot decode, and UnicodeDecodeError for a name flagged
# UTF-8 (bit 11) that is not: a broken archive to us, never a crash.
_CORRUPT_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, NotImplementedError,
                   UnicodeDecodeError)


class ArchiveLimits(BaseModel):
    """Bounds for one archive. The defaults fit the Lambda (1 GB memory, 4 GB /tmp) and the worker disk."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_archive_bytes: int = Field(default=2 * GiB, ge=1, description="Size of the zip itself (ARCHIVE_TOO_LARGE); = MAX_DATASET_BYTES")
    max_entries: int = Field(default=10_000, ge=1, description="Central-directory records, folders and ignored files included (TOO_MANY_ENTRIES)")
    max_total_uncompressed_bytes: int = Field(default=4 * GiB, ge=1, description="Sum of all entries once inflated (ZIP_BOMB_SIZE)")
    max_entry_bytes: int = Field(default=1 * GiB, ge=1, description="One entry once inflated (ZIP_BOMB_SIZE)")
    max_compression_ratio: float = Field(
        default=100.0, gt=1, description="Inflated/compressed, per entry and for the whole archive (ZIP_BOMB_RATIO); images barely compress"
    )
    ratio_floor_bytes: int = Field(default=1 * MiB, ge=0, description="Entries smaller than this are not ratio-checked (short texts compress well)")
    max_name_bytes: int = Field(default=1024, ge=1, description="UTF-8 length of an entry name (INVALID_ENTRY_NAME)")
    max_depth: int = Field(default=32, ge=1, description="Folder depth of an entry name (INVALID_ENTRY_NAME)")


class UnsafeArchive(Exception):  # noqa: N818 - the name says what the archive is; the brief fixes it
    """The archive as a whole is refused. `code` is a stable reason code, `message` says what to do."""

    def __init__(self, code: str, message: str, *, entry: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.entry = entry


class EntryKind(StrEnum):
    FILE = "file"
    """A regular file that may be read (its content decides what it is)."""
    DIRECTORY = "directory"
    IGNORED = "ignored"
    """Hidden or system entry: skipped silently."""
    REJECTED = "rejected"
    """Never read; listed in the manifest with `code`."""


@dataclass(frozen=True)
class ArchiveEntry:
    info: zipfile.ZipInfo
    kind: EntryKind
    path: str
    """Normalised relative POSIX path ('/' separators, no '.' parts); what gets extracted."""
    code: str | None = None
    message: str | None = None

    @property
    def size(self) -> int:
        return self.info.file_size

    @property
    def compressed_size(self) -> int:
        return self.info.compress_size

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix.lower()


def _normalised_parts(raw: str, limits: ArchiveLimits) -> list[str]:
    if _CONTROL.search(raw):
        raise UnsafeArchive("INVALID_ENTRY_NAME", f"entry name {raw!r} contains control characters; rename the file", entry=raw)
    name = raw.replace("\\", "/")  # zips written on Windows sometimes use backslashes
    if name.startswith("/") or _DRIVE_LETTER.match(name):
        raise UnsafeArchive("ABSOLUTE_PATH", f"entry {raw!r} has an absolute path; zip the files with relative paths", entry=raw)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive("PATH_TRAVERSAL", f"entry {raw!r} points outside the archive ('..'); zip the files with plain relative paths",
                            entry=raw)
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_name_bytes or len(parts) > limits.max_depth:
        raise UnsafeArchive("INVALID_ENTRY_NAME", f"entry name {raw[:80]!r}… is too long or too deeply nested", entry=raw)
    return parts


def is_hidden(path: str) -> bool:
    """Dotfiles and dot-folders, `__MACOSX/`, `Thumbs.db`, `desktop.ini`: system clutter, never training data."""
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    if any(p.startswith(".") or p.lower() in IGNORED_FOLDERS for p in parts):
        return True
    return bool(parts) and parts[-1].lower() in IGNORED_FILES


def classify_entry(info: zipfile.ZipInfo, limits: ArchiveLimits | None = None) -> ArchiveEntry:
    """Decide what one central-directory record is, without reading it. Raises UnsafeArchive for hostile entries.

    Security checks come first, so a hostile entry hidden under `__MACOSX/` is still refused.
    """
    limits = limits or ArchiveLimits()
    raw = info.filename
    parts = _normalised_parts(raw, limits)
    path = "/".join(parts)
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        raise UnsafeArchive("SYMLINK", f"entry {raw!r} is a symbolic link; zip the files themselves (zip without -y)", entry=raw)
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive("SPECIAL_FILE", f"entry {raw!r} is a device, pipe or socket, not a file", entry=raw)
    if info.flag_bits & 0x1:
        raise UnsafeArchive("ENCRYPTED_ENTRY", f"entry {raw!r} is password-protected; zip the dataset without a password", entry=raw)
    if info.is_dir() or raw.endswith(("/", "\\")) or not parts or file_type == stat.S_IFDIR:
        return ArchiveEntry(info, EntryKind.DIRECTORY, path)
    if is_hidden(path):
        return ArchiveEntry(info, EntryKind.IGNORED, path)
    if PurePosixPath(path).suffix.lower() in ARCHIVE_SUFFIXES:
        return ArchiveEntry(info, EntryKind.REJECTED, path, "NESTED_ARCHIVE",
                            "archives inside the archive are not unpacked; put the images in the top-level zip")
    if info.compress_type not in SUPPORTED_COMPRESSION:
        return ArchiveEntry(info, EntryKind.REJECTED, path, "UNSUPPORTED_COMPRESSION",
                            f"compression method {info.compress_type} is not supported; re-zip with the standard (deflate) method")
    return ArchiveEntry(info, EntryKind.FILE, path)


_CD_RECORD = struct.Struct("<4s24xHHH12x")  # central-directory file header: signature … name, extra and comment lengths


def _refuse_too_many_records(fh: BinaryIO, limits: ArchiveLimits) -> None:
    """Count the central-directory records before zipfile parses them: it builds one ZipInfo per record (hundreds of bytes
    each) for every record in the directory's bytes, whatever count the end record declares, so a zip of millions of empty
    entries would exhaust memory before TOO_MANY_ENTRIES could be said. Anything unreadable is left to ZipFile to report."""
    endrec = zipfile._EndRecData(fh)  # noqa: SLF001 - the stdlib's own end-record finder (zip64 included); no public equivalent
    if endrec is None:
        return
    if endrec[zipfile._ECD_ENTRIES_TOTAL] > limits.max_entries:  # noqa: SLF001
        raise UnsafeArchive("TOO_MANY_ENTRIES", f"the archive has {endrec[zipfile._ECD_ENTRIES_TOTAL]} entries; "  # noqa: SLF001
                            f"the limit is {limits.max_entries}")
    size_cd = endrec[zipfile._ECD_SIZE]  # noqa: SLF001
    start = endrec[zipfile._ECD_LOCATION] - size_cd  # noqa: SLF001 - where ZipFile itself looks for the directory
    if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # noqa: SLF001
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    pos, end, count = start, start + size_cd, 0
    while pos >= 0 and pos + _CD_RECORD.size <= end:
        fh.seek(pos)
        header = fh.read(_CD_RECORD.size)
        if len(header) < _CD_RECORD.size:
            return
        signature, name_len, extra_len, comment_len = _CD_RECORD.unpack(header)
        if signature != b"PK\x01\x02":
            return
        count += 1
        if count > limits.max_entries:
            raise UnsafeArchive("TOO_MANY_ENTRIES", f"the archive has more than {limits.max_entries} entries; the limit is {limits.max_entries}")
        pos += _CD_RECORD.size + name_len + extra_len + comment_len


class SafeArchive:
    """An opened, pre-checked zip. Use as a context manager; read entries only through `iter_chunks`.

    >>> with SafeArchive.open(path) as archive:
    ...     for entry in archive.files:
    ...         for chunk in archive.iter_chunks(entry): ...
    """

    def __init__(self, zf: zipfile.ZipFile, entries: list[ArchiveEntry], limits: ArchiveLimits, archive_size: int) -> None:
        self._zip = zf
        self.entries = entries
        self.limits = limits
        self.archive_size = archive_size
        self._inflated_total = 0

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, zip_path: Path | str, limits: ArchiveLimits | None = None) -> SafeArchive:
        limits = limits or ArchiveLimits()
        path = Path(zip_path)
        size = path.stat().st_size
        if size > limits.max_archive_bytes:
            raise UnsafeArchive("ARCHIVE_TOO_LARGE", f"the archive is {size} bytes; the limit is {limits.max_archive_bytes} bytes")
        with path.open("rb") as fh:
            head = fh.read(4)
            _refuse_too_many_records(fh, limits)
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            if head in _ZIP_MAGICS:
                raise UnsafeArchive("TRUNCATED_ARCHIVE", f"the zip is truncated or corrupt ({exc}); upload it again") from exc
            raise UnsafeArchive("NOT_A_ZIP", "the file is not a zip archive; upload a .zip of images and .txt captions") from exc
        except UnicodeDecodeError as exc:
            raise UnsafeArchive("INVALID_ENTRY_NAME", f"an entry name is marked UTF-8 but is not ({exc.object[:80]!r}); "
                                "re-zip the dataset with a current zip tool") from exc
        except _CORRUPT_ERRORS as exc:
            raise UnsafeArchive("TRUNCATED_ARCHIVE", f"the zip cannot be read ({exc}); upload it again") from exc
        try:
            entries = cls._preflight(zf, limits, size)
        except BaseException:
            zf.close()
            raise
        return cls(zf, entries, limits, size)

    @staticmethod
    def _preflight(zf: zipfile.ZipFile, limits: ArchiveLimits, archive_size: int) -> list[ArchiveEntry]:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeArchive("TOO_MANY_ENTRIES", f"the archive has {len(infos)} entries; the limit is {limits.max_entries}")
        entries = [classify_entry(info, limits) for info in infos]
        declared_total = 0
        compressed_total = 0
        for entry in entries:
            info = entry.info
            if info.file_size > limits.max_entry_bytes:
                raise UnsafeArchive("ZIP_BOMB_SIZE", f"entry {entry.path!r} inflates to {info.file_size} bytes; "
                                    f"the limit per file is {limits.max_entry_bytes}", entry=info.filename)
            if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1):
                raise UnsafeArchive("ZIP_BOMB_RATIO", f"entry {entry.path!r} claims a compression ratio above "
                                    f"{limits.max_compression_ratio:g}:1 (a zip bomb)", entry=info.filename)
            declared_total += info.file_size
            compressed_total += info.compress_size
        if declared_total > limits.max_total_uncompressed_bytes:
            raise UnsafeArchive("ZIP_BOMB_SIZE", f"the archive inflates to {declared_total} bytes; the limit is "
                                f"{limits.max_total_uncompressed_bytes}; split the dataset")
        if compressed_total > archive_size:
            # Entries sharing compressed bytes is the overlapping-file zip bomb; honest zips never do it.
            raise UnsafeArchive("ZIP_BOMB_RATIO", "entries claim more compressed data than the file holds (overlapping entries, a zip bomb)")
        if declared_total > limits.ratio_floor_bytes and declared_total > limits.max_compression_ratio * archive_size:
            raise UnsafeArchive("ZIP_BOMB_RATIO", f"the archive inflates more than {limits.max_compression_ratio:g}:1 (a zip bomb)")
        seen: set[str] = set()
        out: list[ArchiveEntry] = []
        for entry in entries:
            if entry.kind is EntryKind.FILE and entry.path in seen:
                entry = ArchiveEntry(entry.info, EntryKind.REJECTED, entry.path, "DUPLICATE_ENTRY_NAME",
                                     "the archive holds two files with this name; only the first is used")
            elif entry.kind is EntryKind.FILE:
                seen.add(entry.path)
            out.append(entry)
        if not any(e.kind in (EntryKind.FILE, EntryKind.REJECTED) for e in out):
            raise UnsafeArchive("EMPTY_ARCHIVE", "the archive holds no files (only folders or system files)")
        return out

    # -- reading -------------------------------------------------------------------------------
    @property
    def files(self) -> list[ArchiveEntry]:
        return [e for e in self.entries if e.kind is EntryKind.FILE]

    @property
    def rejected(self) -> list[ArchiveEntry]:
        return [e for e in self.entries if e.kind is EntryKind.REJECTED]

    def iter_chunks(self, entry: ArchiveEntry, chunk_size: int = MiB) -> Iterator[bytes]:
        """Inflate one FILE entry chunk by chunk, enforcing the limits on the bytes actually produced."""
        if entry.kind is not EntryKind.FILE:
            raise ValueError(f"entry {entry.path!r} is {entry.kind}, not a readable file")
        limits = self.limits
        info = entry.info
        produced = 0
        try:
            with self._zip.open(info) as fh:
                while chunk := fh.read(chunk_size):
                    produced += len(chunk)
                    self._inflated_total += len(chunk)
                    if produced > info.file_size or produced > limits.max_entry_bytes:
                        raise UnsafeArchive("ZIP_BOMB_SIZE", f"entry {entry.path!r} inflates past its declared size", entry=info.filename)
                    if self._inflated_total > limits.max_total_uncompressed_bytes:
                        raise UnsafeArchive("ZIP_BOMB_SIZE", "the archive inflates past the total size limit", entry=info.filename)
                    if produced > limits.ratio_floor_bytes and produced > limits.max_compression_ratio * max(info.compress_size, 1):
                        raise UnsafeArchive("ZIP_BOMB_RATIO", f"entry {entry.path!r} inflates more than "
                                            f"{limits.max_compression_ratio:g}:1 (a zip bomb)", entry=info.filename)
                    yield chunk
        except _CORRUPT_ERRORS as exc:
            raise UnsafeArchive("TRUNCATED_ARCHIVE", f"entry {entry.path!r} is truncated or corrupt ({exc}); upload the archive again",
                                entry=info.filename) from exc
        if produced != info.file_size:
            raise UnsafeArchive("TRUNCATED_ARCHIVE", f"entry {entry.path!r} is shorter than its header says; upload the archive again",
                                entry=info.filename)

    def read_small(self, entry: ArchiveEntry, max_bytes: int) -> bytes | None:
        """The whole entry if it declares at most `max_bytes` (captions, loraforge.yaml); None when it is larger."""
        if entry.size > max_bytes:
            return None
        return b"".join(self.iter_chunks(entry))

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> SafeArchive:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def extract_safely(zip_path: Path, dest: Path, limits: ArchiveLimits | None = None) -> list[Path]:
    """Extract every FILE entry of `zip_path` under `dest`, streaming, and return the paths written.

    Ignored (hidden/system) and rejected entries (nested archives…) are skipped. Raises UnsafeArchive
    for archive-level problems; then the files written so far are removed again.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    try:
        with SafeArchive.open(zip_path, limits) as archive:
            for entry in archive.files:
                target = root.joinpath(*entry.path.split("/"))
                # Classification already refused '..' and absolute names; this guards against a future change.
                if not target.resolve().is_relative_to(root):
                    raise UnsafeArchive("PATH_TRAVERSAL", f"entry {entry.path!r} points outside the destination", entry=entry.info.filename)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out = target.open("xb")
                except FileExistsError:
                    continue  # same name twice: the first one wins, as the manifest says
                except (NotADirectoryError, IsADirectoryError) as exc:
                    raise UnsafeArchive("INVALID_ENTRY_NAME", f"entry {entry.path!r} clashes with a folder or file of the same name",
                                        entry=entry.info.filename) from exc
                written.append(target)
                with out:
                    for chunk in archive.iter_chunks(entry):
                        out.write(chunk)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
