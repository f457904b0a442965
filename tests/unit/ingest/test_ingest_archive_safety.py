"""The safe zip reader both ingest and the worker use: what it refuses, what it skips, and that the limits
hold on the bytes actually inflated, not only on what the headers claim."""

from __future__ import annotations

import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from loraforge.datasets.archive import ArchiveLimits, EntryKind, SafeArchive, UnsafeArchive, classify_entry, extract_safely
from tests.unit.ingest.archive_builders import (
    build_zip,
    compressible,
    dataset_entries,
    image_bytes,
    symlink_entry,
    with_declared_size,
    with_flag_bits,
)


def write(tmp_path: Path, data: bytes, name: str = "in.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("name", "code"), [
    ("../evil.png", "PATH_TRAVERSAL"),
    ("photos/../../evil.png", "PATH_TRAVERSAL"),
    ("photos\\..\\..\\evil.png", "PATH_TRAVERSAL"),
    ("/etc/cron.d/evil", "ABSOLUTE_PATH"),
    ("C:/Windows/evil.png", "ABSOLUTE_PATH"),
    ("c:evil.png", "ABSOLUTE_PATH"),
    ("photos/evil\x07.png", "INVALID_ENTRY_NAME"),
    ("__MACOSX/../../evil.png", "PATH_TRAVERSAL"),
])
def test_hostile_entry_names_refuse_the_whole_archive(name: str, code: str) -> None:
    # Given a central-directory record with a hostile name
    info = zipfile.ZipInfo(name)
    # When it is classified / Then the archive is refused with the stable code
    with pytest.raises(UnsafeArchive) as refused:
        classify_entry(info)
    assert refused.value.code == code
    assert refused.value.message


@pytest.mark.parametrize(("name", "kind", "code"), [
    ("photos/a.png", EntryKind.FILE, None),
    ("./photos/a.png", EntryKind.FILE, None),
    ("photos/", EntryKind.DIRECTORY, None),
    ("__MACOSX/photos/._a.png", EntryKind.IGNORED, None),
    ("photos/.DS_Store", EntryKind.IGNORED, None),
    (".git/config", EntryKind.IGNORED, None),
    ("photos/Thumbs.db", EntryKind.IGNORED, None),
    ("photos/more.zip", EntryKind.REJECTED, "NESTED_ARCHIVE"),
    ("photos/more.tar.gz", EntryKind.REJECTED, "NESTED_ARCHIVE"),
])
def test_entries_are_files_folders_ignored_clutter_or_rejected(name: str, kind: EntryKind, code: str | None) -> None:
    entry = classify_entry(zipfile.ZipInfo(name))
    assert (entry.kind, entry.code) == (kind, code)
    assert not entry.path.startswith("./")


def test_symlink_and_encrypted_entries_refuse_the_archive(tmp_path: Path) -> None:
    # Given a zip holding a symlink, and another whose entry has the encryption flag set
    link = write(tmp_path, build_zip([symlink_entry("photos/link.png", "/etc/passwd")]), "link.zip")
    locked = write(tmp_path, with_flag_bits(build_zip([("a.png", image_bytes(1))]), "a.png", 0x1), "locked.zip")
    # When they are opened / Then each is refused before any byte is inflated
    for path, code in ((link, "SYMLINK"), (locked, "ENCRYPTED_ENTRY")):
        with pytest.raises(UnsafeArchive) as refused:
            SafeArchive.open(path)
        assert refused.value.code == code


@pytest.mark.parametrize(("data", "code"), [
    (b"these are not the bytes of a zip file", "NOT_A_ZIP"),
    (build_zip(dataset_entries(3))[:700], "TRUNCATED_ARCHIVE"),
    (build_zip([]), "EMPTY_ARCHIVE"),
    (build_zip([("__MACOSX/._a.png", b"x"), (".DS_Store", b"x"), ("photos/", b"")]), "EMPTY_ARCHIVE"),
])
def test_broken_or_empty_archives_are_refused(tmp_path: Path, data: bytes, code: str) -> None:
    with pytest.raises(UnsafeArchive) as refused:
        SafeArchive.open(write(tmp_path, data))
    assert refused.value.code == code


def test_declared_sizes_are_checked_before_anything_is_inflated(tmp_path: Path) -> None:
    limits = ArchiveLimits(max_entries=5, max_total_uncompressed_bytes=3_000_000, max_entry_bytes=2_000_000)
    cases = {
        "TOO_MANY_ENTRIES": build_zip([(f"f{i}.txt", b"x") for i in range(6)]),
        "ZIP_BOMB_RATIO": build_zip([("zeros.png", bytes(1_500_000))]),
        "ZIP_BOMB_SIZE": build_zip([(f"part{i}.bin", compressible(1_200_000, 30, seed=i)) for i in range(3)]),
    }
    for code, data in cases.items():
        with pytest.raises(UnsafeArchive) as refused:
            SafeArchive.open(write(tmp_path, data), limits)
        assert refused.value.code == code, code


def test_one_entry_over_the_per_file_limit_is_a_size_bomb(tmp_path: Path) -> None:
    limits = ArchiveLimits(max_entry_bytes=1_000_000)
    with pytest.raises(UnsafeArchive) as refused:
        SafeArchive.open(write(tmp_path, build_zip([("big.bin", compressible(1_500_000, 10))])), limits)
    assert refused.value.code == "ZIP_BOMB_SIZE"


def test_a_header_that_understates_the_size_cannot_make_the_reader_inflate_more(tmp_path: Path) -> None:
    # Given a 30 MB run of zeros whose central-directory record claims it inflates to 1,000 bytes
    honest = build_zip([("a.png", image_bytes(1)), ("liar.png", bytes(30_000_000))])
    path = write(tmp_path, with_declared_size(honest, "liar.png", 1_000))
    # When it is extracted
    with pytest.raises(UnsafeArchive) as refused:
        extract_safely(path, tmp_path / "out")
    # Then reading stops at the declared size (the CRC no longer matches) and nothing is left behind
    assert refused.value.code == "TRUNCATED_ARCHIVE"
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_a_header_that_overstates_compression_is_refused_as_a_bomb(tmp_path: Path) -> None:
    # Given an entry declaring 900 MB behind a few kilobytes of compressed data
    path = write(tmp_path, with_declared_size(build_zip([("bomb.png", bytes(100_000))]), "bomb.png", 900_000_000))
    with pytest.raises(UnsafeArchive) as refused:
        SafeArchive.open(path)
    assert refused.value.code == "ZIP_BOMB_RATIO"


def test_the_ratio_is_enforced_while_inflating_too(tmp_path: Path) -> None:
    # Given limits under which the declared sizes pass but the inflated bytes run past the ratio
    data = build_zip([("zeros.bin", bytes(3_000_000))])
    path = write(tmp_path, data)
    with SafeArchive.open(path, ArchiveLimits(max_compression_ratio=10_000)) as archive:
        entry = archive.files[0]
        archive.limits = ArchiveLimits(max_compression_ratio=50, ratio_floor_bytes=100_000)
        # When the entry is read / Then the reader stops as soon as the produced bytes exceed the ratio
        produced = 0
        with pytest.raises(UnsafeArchive) as refused:
            for chunk in archive.iter_chunks(entry, chunk_size=64 * 1024):
                produced += len(chunk)
    assert refused.value.code == "ZIP_BOMB_RATIO"
    assert produced <= 50 * entry.compressed_size + 64 * 1024


def test_extract_safely_writes_only_real_files_under_the_destination(tmp_path: Path) -> None:
    # Given a dataset zip with Finder clutter, a nested archive and a duplicate name
    entries = [*dataset_entries(2, folder="set/"), ("__MACOSX/set/._img_000.png", b"junk"), ("set/.DS_Store", b"junk"),
               ("set/more.zip", build_zip([("x.png", image_bytes(9))])), ("set/img_000.png", image_bytes(5))]
    path = write(tmp_path, build_zip(entries))
    # When it is extracted
    written = extract_safely(path, tmp_path / "out")
    # Then only the images and captions are written, the first of two same-named files wins
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert names == ["set/img_000.png", "set/img_000.txt", "set/img_001.png", "set/img_001.txt"]
    assert (tmp_path / "out/set/img_000.png").read_bytes() == image_bytes(0)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()) == names


def test_duplicate_entry_names_are_rejected_after_the_first(tmp_path: Path) -> None:
    path = write(tmp_path, build_zip([("a.png", image_bytes(1)), ("a.png", image_bytes(2))]))
    with SafeArchive.open(path) as archive:
        assert [e.code for e in archive.rejected] == ["DUPLICATE_ENTRY_NAME"]
        assert len(archive.files) == 1


def _with_name_byte(zip_bytes: bytes, name: str, index: int, value: int, *, central: bool, local: bool) -> bytes:
    """Replace one byte of an entry's name in its central-directory record and/or its local header."""
    data = bytearray(zip_bytes)
    encoded = name.encode()
    for signature, name_len_offset, header_len, wanted in ((b"PK\x03\x04", 26, 30, local), (b"PK\x01\x02", 28, 46, central)):
        pos = data.find(signature)
        while wanted and pos != -1:
            name_len = struct.unpack_from("<H", data, pos + name_len_offset)[0]
            if bytes(data[pos + header_len:pos + header_len + name_len]) == encoded:
                data[pos + header_len + index] = value
            pos = data.find(signature, pos + 4)
    return bytes(data)


@pytest.mark.parametrize(("central", "local"), [(True, True), (False, True)], ids=["central-directory", "local-header-only"])
def test_an_entry_name_flagged_utf8_that_is_not_utf8_is_refused_not_a_crash(tmp_path: Path, central: bool, local: bool) -> None:
    # Given a zip whose entry name carries the UTF-8 flag (bit 11) but holds a cp437 byte (0x82, 'é'), as some zip tools write it
    flagged = with_flag_bits(build_zip([("a.png", image_bytes(1)), ("cafX.png", image_bytes(2))]), "cafX.png", 0x800)
    path = write(tmp_path, _with_name_byte(flagged, "cafX.png", 3, 0x82, central=central, local=local))
    # When it is opened and every file is read
    with pytest.raises(UnsafeArchive) as refused:
        with SafeArchive.open(path) as archive:
            for entry in archive.files:
                for _ in archive.iter_chunks(entry):
                    pass
    # Then it is refused with a reason code, never a UnicodeDecodeError out of the handler
    assert refused.value.code in ("INVALID_ENTRY_NAME", "TRUNCATED_ARCHIVE")
    assert refused.value.message


def test_too_many_entries_is_refused_before_the_central_directory_is_parsed_into_memory(tmp_path: Path) -> None:
    # Given a 5 MB zip of 60,000 empty entries (one per ~90 bytes; a 1 GB upload could hold ten million), limit 1,000
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(60_000):
            zf.writestr(f"{i:05x}", b"")
    # When it is opened
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeArchive) as refused:
            SafeArchive.open(path, ArchiveLimits(max_entries=1_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Then it is refused as too many entries, without first building a record per entry (zipfile's parse takes ~30 MB here)
    assert refused.value.code == "TOO_MANY_ENTRIES"
    assert peak < 4 * 1024**2, f"{peak} bytes allocated to refuse it"


def test_a_central_directory_that_understates_its_entry_count_is_still_counted(tmp_path: Path) -> None:
    # Given a zip of 50 entries whose end-of-central-directory record claims 2 (zipfile reads every record regardless)
    data = bytearray(build_zip([(f"f{i}.txt", b"x") for i in range(50)]))
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, eocd + 8, 2, 2)
    # When it is opened with a limit of 10 / Then the records actually present are counted
    with pytest.raises(UnsafeArchive) as refused:
        SafeArchive.open(write(tmp_path, bytes(data)), ArchiveLimits(max_entries=10))
    assert refused.value.code == "TOO_MANY_ENTRIES"
