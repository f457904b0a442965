"""The corpus of hostile and broken drops: each one, dropped under incoming/ and delivered through the real
handler, ends as the dataset state its rule says, with the expected reason code, and never raises."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from loraforge.models.status import DatasetStatus
from loraforge.settings import reset_settings
from tests.integration.ingest.conftest import OWNER, IngestRig
from tests.unit.ingest.archive_builders import (
    build_zip,
    compressible,
    dataset_entries,
    image_bytes,
    mp4_bytes,
    noisy_png,
    png_header_only,
    symlink_entry,
    with_flag_bits,
)

READY, INVALID = DatasetStatus.READY, DatasetStatus.INVALID


def good(count: int = 4) -> list:
    return dataset_entries(count, folder="set/")


@dataclass
class Case:
    build: Callable[[], bytes]
    status: DatasetStatus
    code: str
    where: str = "errors"
    """errors: a dataset error code · rejected: a rejected item's reason · note: a note on an accepted item."""
    env: dict[str, str] = field(default_factory=dict)


def zip_of(*entries) -> Callable[[], bytes]:
    return lambda: build_zip([*entries])


CASES: dict[str, Case] = {
    "path_traversal": Case(zip_of(*good(), ("../../evil.png", image_bytes(50))), INVALID, "PATH_TRAVERSAL"),
    "windows_path_traversal": Case(zip_of(*good(), ("set\\..\\..\\evil.png", image_bytes(50))), INVALID, "PATH_TRAVERSAL"),
    "absolute_path": Case(zip_of(*good(), ("/etc/cron.d/evil", b"* * * * * root sh")), INVALID, "ABSOLUTE_PATH"),
    "symlink": Case(zip_of(*good(), symlink_entry("set/passwd.png", "/etc/passwd")), INVALID, "SYMLINK"),
    "zip_bomb_ratio": Case(zip_of(*good(), ("set/zeros.png", bytes(3_000_000))), INVALID, "ZIP_BOMB_RATIO"),
    "zip_bomb_total_size": Case(zip_of(*[(f"set/part{i}.png", compressible(900_000, 30, seed=i)) for i in range(3)]), INVALID,
                                "ZIP_BOMB_SIZE", env={"MAX_DATASET_BYTES": "1000000"}),
    "too_many_entries": Case(zip_of(*[(f"set/{i}.txt", b"") for i in range(10_001)]), INVALID, "TOO_MANY_ENTRIES"),
    "encrypted_entry": Case(lambda: with_flag_bits(build_zip(good()), "set/img_001.png", 0x1), INVALID, "ENCRYPTED_ENTRY"),
    "truncated_zip": Case(lambda: build_zip(good(6))[:-300], INVALID, "TRUNCATED_ARCHIVE"),
    "not_a_zip": Case(lambda: b"Name,Score\nalice,3\nbob,5\n" * 20, INVALID, "NOT_A_ZIP"),
    "empty_zip": Case(zip_of(), INVALID, "EMPTY_ARCHIVE"),
    "only_mac_clutter": Case(zip_of(("__MACOSX/._a.png", b"x"), ("set/.DS_Store", b"x")), INVALID, "EMPTY_ARCHIVE"),
    "only_captions": Case(zip_of(*[(f"set/{i}.txt", b"a caption") for i in range(5)]), INVALID, "NO_IMAGES"),
    "archive_too_large": Case(lambda: build_zip(good(), compression=zipfile.ZIP_STORED) + compressible(1_200_000, 1), INVALID,
                              "ARCHIVE_TOO_LARGE", env={"MAX_DATASET_BYTES": "1000000"}),
    "too_few_images": Case(zip_of(*good(3)), INVALID, "TOO_FEW_IMAGES"),
    "invalid_yaml": Case(zip_of(*good(), ("set/loraforge.yaml", b"preset: [tiny-sd\ntrigger_word: ohwx\n")), INVALID,
                         "INVALID_DROP_CONFIG"),
    "unknown_yaml_key": Case(zip_of(*good(), ("loraforge.yaml", b"preset: tiny-sd\nepochs: 3\n")), INVALID, "INVALID_DROP_CONFIG"),
    "unknown_preset": Case(zip_of(*good(), ("loraforge.yaml", b"preset: sdxxl\n")), INVALID, "UNKNOWN_PRESET"),
    "hyperparameter_out_of_bounds": Case(zip_of(*good(), ("loraforge.yaml", b"preset: tiny-sd\nhyperparameters: {steps: 5000}\n")),
                                         INVALID, "HYPERPARAMETER_OUT_OF_BOUNDS"),
    # Item-level rules: enough good images, so the dataset is ready and the bad item is listed.
    "nested_zip": Case(zip_of(*good(), ("set/more.zip", build_zip(good(2)))), READY, "NESTED_ARCHIVE", "rejected"),
    "zip_named_png": Case(zip_of(*good(), ("set/photo.png", build_zip(good(1)))), READY, "NESTED_ARCHIVE", "rejected"),
    "text_renamed_png": Case(zip_of(*good(), ("set/notes.png", b"remember to buy milk")), READY, "NOT_AN_IMAGE", "rejected"),
    "truncated_png": Case(zip_of(*good(), ("set/cut.png", noisy_png()[:4000])), READY, "TRUNCATED_IMAGE", "rejected"),
    "one_pixel_image": Case(zip_of(*good(), ("set/dot.png", image_bytes(60, size=(1, 1)))), READY, "IMAGE_TOO_SMALL", "rejected"),
    "60000_px_header": Case(zip_of(*good(), ("set/wide.png", png_header_only(60_000, 60_000))), READY, "IMAGE_TOO_LARGE", "rejected"),
    "gif_image": Case(zip_of(*good(), ("set/anim.gif", image_bytes(61, fmt="GIF"))), READY, "UNSUPPORTED_IMAGE_FORMAT", "rejected"),
    "clip_for_image_preset": Case(zip_of(*good(), ("set/clip.mp4", mp4_bytes(640, 480))), READY, "VIDEO_NOT_SUPPORTED", "rejected"),
    "cmyk_jpeg": Case(zip_of(*good(), ("set/print.jpg", image_bytes(62, fmt="JPEG", mode="CMYK"))), READY, "CMYK_CONVERTED", "note"),
    "caption_not_utf8": Case(zip_of(*good(), ("set/x.png", image_bytes(63)), ("set/x.txt", "caf\xe9".encode("latin-1"))), READY,
                             "CAPTION_NOT_UTF8", "rejected"),
    "caption_too_long": Case(zip_of(*good(), ("set/x.png", image_bytes(64)), ("set/x.txt", b"word " * 600)), READY,
                             "CAPTION_TOO_LONG", "rejected"),
    "caption_without_image": Case(zip_of(*good(), ("set/orphan.txt", b"a caption")), READY, "CAPTION_WITHOUT_IMAGE", "rejected"),
    "image_without_caption": Case(zip_of(*good(), ("set/bare.png", image_bytes(65))), READY, "DEFAULT_CAPTION", "note"),
    "duplicate_images": Case(zip_of(*good(), ("set/copy.png", image_bytes(1))), READY, "DUPLICATE_IMAGE", "rejected"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_drop(ingest: IngestRig, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    case = CASES[name]
    for var, value in case.env.items():
        monkeypatch.setenv(var, value)
    reset_settings()
    # Given a drop built to break one rule
    key = f"incoming/{OWNER}/{name}.zip"
    # When S3 reports it through EventBridge to the real handler (it must not raise)
    outcome = ingest.drop(key, case.build())
    # Then the dataset ends in the rule's state with the expected reason code
    dataset = ingest.dataset(outcome["dataset_id"])
    assert dataset.status == case.status, (dataset.errors, dataset.rejected_sample)
    assert outcome["dataset_status"] == case.status
    manifest = ingest.manifest(dataset)
    if case.where == "errors":
        assert case.code in [e.code for e in dataset.errors]
        assert case.code in manifest["errors"] and case.code in outcome["errors"]
        assert all(e.message for e in dataset.errors)
    elif case.where == "rejected":
        assert case.code in {r["reason"] for r in manifest["rejected"]}
        assert case.code in {r.reason for r in dataset.rejected_sample}
    else:
        assert any(case.code in item["notes"] for item in manifest["accepted"])
        assert any(w.startswith(case.code) for w in dataset.warnings)
    # And only a ready dataset gets its archive and a queued job
    jobs = ingest.jobs()
    if case.status == READY:
        assert [j.dataset_id for j in jobs] == [dataset.id] and dataset.job_id == jobs[0].id
        assert ingest.exists(dataset.archive_key)
    else:
        assert jobs == [] and dataset.job_id is None
        assert not ingest.exists(dataset.archive_key)


def test_the_corpus_covers_the_issue_list() -> None:
    required = {"path_traversal", "absolute_path", "symlink", "zip_bomb_ratio", "zip_bomb_total_size", "too_many_entries",
                "encrypted_entry", "nested_zip", "truncated_zip", "not_a_zip", "empty_zip", "only_captions", "text_renamed_png",
                "truncated_png", "one_pixel_image", "60000_px_header", "cmyk_jpeg", "caption_not_utf8", "caption_too_long",
                "caption_without_image", "image_without_caption", "duplicate_images", "too_few_images", "invalid_yaml", "unknown_preset"}
    assert required <= set(CASES) and len(CASES) >= 25
