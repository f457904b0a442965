"""Safe extract + captions into the private training folder: exactly the manifest's accepted items when the input
names the dataset's manifest, else the ingest's own archive and caption rules applied again."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from loraforge.contract import WorkerErrorCode
from loraforge.models.dataset import DatasetManifest, ManifestItem
from loraforge.models.errors import ErrorKind
from loraforge_worker.dataset_prep import load_manifest, prepare_dataset
from loraforge_worker.errors import WorkerFailure
from tests.integration.worker.helpers import dataset_zip, image_bytes, ingest_manifest, mixed_dataset_zip, tiny_sd_spec


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "dataset.zip"
    path.write_bytes(data)
    return path


def zip_of(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_images_are_flattened_with_final_captions_and_the_trigger_word(tmp_path: Path):
    # Given captions using [trigger], one image without a caption, and two images with the same name in different folders
    archive = zip_of({
        "set/a.png": image_bytes(0), "set/a.txt": b"a photo of [trigger] smiling",
        "set/b.jpg": image_bytes(1, fmt="JPEG"),
        "other/a.png": image_bytes(2), "other/a.txt": b"ohwx in the rain",
        "__MACOSX/._a.png": b"junk", "loraforge.yaml": b"preset: tiny-sd",
    })
    spec = tiny_sd_spec(trigger="ohwx")

    # When prepared
    prepared = prepare_dataset(write(tmp_path, archive), tmp_path, tmp_path / "dataset", spec, max_archive_bytes=10**8)

    # Then every image sits in one flat folder with a .txt holding its final caption
    files = sorted(p.name for p in prepared.folder.iterdir())
    assert prepared.items == 3
    assert files == ["a.png", "a.txt", "a_2.png", "a_2.txt", "b.jpg", "b.txt"]
    captions = {p.stem: p.read_text() for p in prepared.folder.glob("*.txt")}
    assert captions["a"] == "ohwx in the rain"  # other/a.png sorts first
    assert captions["a_2"] == "a photo of ohwx smiling"
    assert captions["b"] == "ohwx"  # no caption: the default caption (the trigger word)
    assert not (tmp_path / "extract").exists()


def test_files_that_are_not_usable_images_are_skipped_and_listed(tmp_path: Path):
    archive = zip_of({"a.png": image_bytes(0), "notes.pdf": b"%PDF-1.4", "fake.png": b"not an image", "c.gif": b"GIF89a...."})
    prepared = prepare_dataset(write(tmp_path, archive), tmp_path, tmp_path / "dataset", tiny_sd_spec(), max_archive_bytes=10**8)
    assert prepared.items == 1
    assert {s.split(":")[0] for s in prepared.skipped} == {"notes.pdf", "fake.png", "c.gif"}


@pytest.mark.parametrize(("entries", "reason"), [
    ({"a.png": image_bytes(0), "../../etc/evil.txt": b"x"}, "PATH_TRAVERSAL"),
    ({"a.png": image_bytes(0), "/abs/a.png": b"x"}, "ABSOLUTE_PATH"),
])
def test_hostile_archives_are_refused_before_anything_is_extracted(tmp_path: Path, entries, reason):
    with pytest.raises(WorkerFailure) as err:
        prepare_dataset(write(tmp_path, zip_of(entries)), tmp_path / "w", tmp_path / "w" / "dataset", tiny_sd_spec(), max_archive_bytes=10**8)
    assert err.value.code == WorkerErrorCode.DATASET_UNSAFE and err.value.message.startswith(reason)
    assert not (tmp_path / "etc").exists() and not list((tmp_path / "w").rglob("*.txt"))


def test_a_file_that_is_not_a_zip_and_an_archive_without_images_are_unreadable(tmp_path: Path):
    with pytest.raises(WorkerFailure) as not_zip:
        prepare_dataset(write(tmp_path, b"hello, not a zip"), tmp_path, tmp_path / "dataset", tiny_sd_spec(), max_archive_bytes=10**8)
    assert not_zip.value.code == WorkerErrorCode.DATASET_UNREADABLE
    with pytest.raises(WorkerFailure) as no_images:
        prepare_dataset(write(tmp_path, zip_of({"readme.txt": b"hi"})), tmp_path, tmp_path / "dataset2", tiny_sd_spec(),
                        max_archive_bytes=10**8)
    assert no_images.value.code == WorkerErrorCode.DATASET_UNREADABLE and "no usable training images" in no_images.value.message


def test_the_generated_test_dataset_prepares_fully(tmp_path: Path):
    prepared = prepare_dataset(write(tmp_path, dataset_zip(count=8)), tmp_path, tmp_path / "dataset", tiny_sd_spec(), max_archive_bytes=10**8)
    assert prepared.items == 8 and prepared.skipped == []


# -- with the dataset's manifest: exactly what ingest accepted ---------------------------------------
def test_with_a_manifest_only_the_accepted_items_are_trained_with_the_manifest_captions(tmp_path: Path):
    # Given an archive holding items ingest rejected, and the manifest ingest wrote for it
    zip_path = write(tmp_path, mixed_dataset_zip())
    manifest = ingest_manifest(zip_path)
    assert {r.reason for r in manifest.rejected} >= {"DUPLICATE_IMAGE", "IMAGE_TOO_SMALL", "CAPTION_NOT_UTF8"}

    # When the worker prepares the training folder from the archive and the manifest
    prepared = prepare_dataset(zip_path, tmp_path, tmp_path / "dataset", tiny_sd_spec(trigger="ohwx"), max_archive_bytes=10**8,
                               manifest=manifest)

    # Then the folder holds exactly the accepted items, each with its manifest caption through the caption rule
    assert [item.key for item in manifest.accepted] == ["set/a.png", "set/b.png", "set/c.png", "set/d.jpg"]
    assert sorted(p.name for p in prepared.folder.iterdir()) == ["a.png", "a.txt", "b.png", "b.txt", "c.png", "c.txt", "d.jpg", "d.txt"]
    assert prepared.items == 4
    captions = {p.stem: p.read_text(encoding="utf-8") for p in prepared.folder.glob("*.txt")}
    assert captions == {"a": "a photo of ohwx smiling", "b": "ohwx", "c": "ohwx in the rain", "d": "ohwx, a red square"}
    assert (prepared.folder / "a.png").read_bytes() == image_bytes(0)
    # and what was left out is listed with ingest's reasons
    assert sorted(prepared.skipped) == sorted(f"{r.key}: {r.reason}" for r in manifest.rejected)
    assert not (tmp_path / "extract").exists()


def test_the_caption_is_the_manifests_not_the_archives(tmp_path: Path):
    # Given a manifest whose caption for a.png differs from the .txt in the archive
    zip_path = write(tmp_path, mixed_dataset_zip())
    manifest = ingest_manifest(zip_path)
    manifest.accepted[0].caption = "a photo of [trigger], as validated"

    prepared = prepare_dataset(zip_path, tmp_path, tmp_path / "dataset", tiny_sd_spec(trigger="ohwx"), max_archive_bytes=10**8,
                               manifest=manifest)

    assert (prepared.folder / "a.txt").read_text(encoding="utf-8") == "a photo of ohwx, as validated"


@pytest.mark.parametrize("change", ["sha256", "size", "missing"])
def test_an_archive_that_changed_after_validation_is_a_checksum_mismatch(tmp_path: Path, change: str):
    # Given a manifest that does not match the archive any more (a file's bytes or size, or a file that is gone)
    zip_path = write(tmp_path, mixed_dataset_zip())
    manifest = ingest_manifest(zip_path)
    item = manifest.accepted[1]
    if change == "sha256":
        item.sha256 = "0" * 64
    elif change == "size":
        item.size += 1
    else:
        item.key = "set/not-in-the-archive.png"

    # When the worker prepares it
    with pytest.raises(WorkerFailure) as err:
        prepare_dataset(zip_path, tmp_path, tmp_path / "dataset", tiny_sd_spec(), max_archive_bytes=10**8, manifest=manifest)

    # Then it refuses to train on it, as a system failure (not the user's fault; retried) that says why
    assert err.value.code == WorkerErrorCode.DATASET_CHECKSUM_MISMATCH and err.value.kind == ErrorKind.SYSTEM
    assert "changed after validation" in err.value.message


def test_a_hostile_archive_is_refused_with_a_manifest_too(tmp_path: Path):
    zip_path = write(tmp_path, zip_of({"a.png": image_bytes(0), "../../etc/evil.txt": b"x"}))
    manifest = DatasetManifest(dataset_id="ds_x", archive_key="k", accepted=[
        ManifestItem(key="a.png", size=len(image_bytes(0)), sha256="0" * 64, width=64, height=64, caption="")])
    with pytest.raises(WorkerFailure) as err:
        prepare_dataset(zip_path, tmp_path, tmp_path / "dataset", tiny_sd_spec(), max_archive_bytes=10**8, manifest=manifest)
    assert err.value.code == WorkerErrorCode.DATASET_UNSAFE and err.value.message.startswith("PATH_TRAVERSAL")
    assert list((tmp_path / "dataset").iterdir()) == []  # refused before anything was written


def test_a_manifest_file_that_is_not_a_manifest_fails_clearly(tmp_path: Path):
    path = tmp_path / "manifest.json"
    path.write_text('{"dataset_id": "ds_x"}')
    with pytest.raises(WorkerFailure) as err:
        load_manifest(path)
    assert err.value.code == WorkerErrorCode.DATASET_DOWNLOAD_FAILED and err.value.kind == ErrorKind.SYSTEM
