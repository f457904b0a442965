"""Validation of an archive's content: images by content, preset-aware rules, captions, duplicates, the report."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from loraforge.datasets.archive import SafeArchive
from loraforge.datasets.drop_config import DropConfigError, dataset_name, parse_drop_config
from loraforge.datasets.probe import ProbeError, probe_image, probe_video, sniff
from loraforge.datasets.rules import generic_rules, rules_for_preset
from loraforge.datasets.validate import ValidationReport, validate_archive
from loraforge.models.dataset import DatasetKind
from loraforge.models.errors import InvalidInput
from tests.unit.ingest.archive_builders import build_zip, dataset_entries, image_bytes, mp4_bytes, noisy_jpeg, noisy_png, png_header_only

TINY = rules_for_preset("tiny-sd")


def validate(tmp_path: Path, entries: list, rules=TINY, skip: frozenset[str] = frozenset()) -> ValidationReport:
    path = tmp_path / "ds.zip"
    path.write_bytes(build_zip(entries))
    with SafeArchive.open(path) as archive:
        return validate_archive(archive, rules, skip=skip)


def rejected(report: ValidationReport) -> dict[str, str]:
    return {r.key: r.reason for r in report.rejected}


def test_a_clean_dataset_is_accepted_with_sizes_hashes_and_captions(tmp_path: Path) -> None:
    report = validate(tmp_path, dataset_entries(4, folder="set/"))
    assert report.ok and not report.rejected
    assert [i.key for i in report.accepted] == [f"set/img_00{i}.png" for i in range(4)]
    first = report.accepted[0]
    assert (first.width, first.height, first.caption, first.caption_source) == (64, 64, "a photo of [trigger] number 0", "file")
    assert len(first.sha256) == 64 and first.size == len(image_bytes(0))
    assert report.stats.model_dump() == {"images": 4, "rejected": 0, "total_bytes": sum(i.size for i in report.accepted),
                                         "min_side": 64, "max_side": 64, "captioned": 4}


def test_images_are_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    entries = [*dataset_entries(4), ("jpeg_named.png", image_bytes(10, fmt="JPEG")), ("no_extension", image_bytes(11)),
               ("notes.png", b"just some text"), ("readme.md", b"# hello"), ("anim.gif", image_bytes(12, fmt="GIF")),
               ("inner.png", build_zip([("x.png", image_bytes(13))]))]
    report = validate(tmp_path, entries)
    assert {"jpeg_named.png", "no_extension"} <= {i.key for i in report.accepted}
    assert rejected(report) == {"notes.png": "NOT_AN_IMAGE", "readme.md": "UNSUPPORTED_FILE", "anim.gif": "UNSUPPORTED_IMAGE_FORMAT",
                                "inner.png": "NESTED_ARCHIVE"}
    assert report.ok and any(w.startswith("REJECTED_ITEMS: 4 files") for w in report.warnings)


def test_preset_rules_reject_small_images_and_note_low_resolution(tmp_path: Path) -> None:
    # Given tiny-sd (min side 32, recommended 64) and images of 16, 48 and 64 px
    entries = [*dataset_entries(4), ("small.png", image_bytes(20, size=(16, 100))), ("mid.png", image_bytes(21, size=(48, 48)))]
    report = validate(tmp_path, entries)
    assert rejected(report) == {"small.png": "IMAGE_TOO_SMALL"}
    mid = next(i for i in report.accepted if i.key == "mid.png")
    assert mid.notes == ["BELOW_RECOMMENDED_RESOLUTION", "DEFAULT_CAPTION"]
    assert any(w.startswith("BELOW_RECOMMENDED_RESOLUTION: 1 ") for w in report.warnings)


def test_too_few_images_for_the_preset_make_the_dataset_invalid(tmp_path: Path) -> None:
    report = validate(tmp_path, dataset_entries(4), rules=rules_for_preset("flux-dev"))
    # 64 px images are below FLUX's 256 px minimum: nothing is usable
    assert report.error_codes == ["NO_IMAGES"]
    report = validate(tmp_path, dataset_entries(3))
    assert report.error_codes == ["TOO_FEW_IMAGES"]
    assert "needs at least 4" in report.errors[0].message


def test_fewer_than_recommended_images_is_a_warning_not_an_error(tmp_path: Path) -> None:
    rules = TINY.model_copy(update={"recommended_images": 10})
    report = validate(tmp_path, dataset_entries(5), rules=rules)
    assert report.ok
    assert any(w.startswith("FEWER_THAN_RECOMMENDED_IMAGES") for w in report.warnings)


def test_caption_pairing_rules(tmp_path: Path) -> None:
    entries = [*dataset_entries(4), ("bad.png", image_bytes(30)), ("bad.txt", "caf\xe9".encode("latin-1")),
               ("nocap.png", image_bytes(31)), ("orphan.txt", b"a caption for nothing"), ("empty.png", image_bytes(32)),
               ("empty.txt", b"  \n")]
    report = validate(tmp_path, entries)
    assert rejected(report) == {"bad.txt": "CAPTION_NOT_UTF8", "bad.png": "CAPTION_NOT_UTF8", "orphan.txt": "CAPTION_WITHOUT_IMAGE"}
    by_key = {i.key: i for i in report.accepted}
    assert by_key["nocap.png"].caption_source == "default" and "DEFAULT_CAPTION" in by_key["nocap.png"].notes
    assert by_key["empty.png"].caption == "" and by_key["empty.png"].caption_source == "default"
    assert report.stats.captioned == 4


def test_duplicate_content_is_kept_once(tmp_path: Path) -> None:
    entries = [*dataset_entries(4), ("copy_of_0.png", image_bytes(0)), ("z/again.png", image_bytes(0))]
    report = validate(tmp_path, entries)
    assert rejected(report) == {"copy_of_0.png": "DUPLICATE_IMAGE", "z/again.png": "DUPLICATE_IMAGE"}
    assert "img_000.png" in report.rejected[0].message


def test_cmyk_jpegs_are_accepted_and_noted(tmp_path: Path) -> None:
    report = validate(tmp_path, [*dataset_entries(4), ("print.jpg", image_bytes(40, fmt="JPEG", mode="CMYK"))])
    item = next(i for i in report.accepted if i.key == "print.jpg")
    assert "CMYK_CONVERTED" in item.notes
    assert any(w.startswith("CMYK_CONVERTED: 1 ") for w in report.warnings)


@pytest.mark.parametrize(("data", "fmt", "code"), [
    (noisy_png()[:3000], "PNG", "TRUNCATED_IMAGE"),
    (image_bytes(1, size=(256, 256), fmt="JPEG")[:400], "JPEG", "TRUNCATED_IMAGE"),
    (noisy_jpeg()[:-2000], "JPEG", "TRUNCATED_IMAGE"),
    (image_bytes(1, fmt="WEBP")[:-10], "WEBP", "TRUNCATED_IMAGE"),
    (png_header_only(60_000, 60_000), "PNG", "IMAGE_TOO_LARGE"),
    (png_header_only(60_000, 10), "PNG", "IMAGE_TOO_LARGE"),
    (png_header_only(9_000, 9_000), "PNG", "IMAGE_TOO_LARGE"),
])
def test_probe_refusals(data: bytes, fmt: str, code: str) -> None:
    assert sniff(data[:64]) == fmt
    with pytest.raises(ProbeError) as refused:
        probe_image(io.BytesIO(data), fmt, len(data))
    assert refused.value.code == code


def test_a_huge_header_is_refused_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a header declaring 60,000 px, and a decoder that would fail the test if it ever ran
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("pixels were decoded"))
    data = png_header_only(60_000, 800)
    with pytest.raises(ProbeError) as refused:
        probe_image(io.BytesIO(data), "PNG", len(data))
    assert refused.value.code == "IMAGE_TOO_LARGE"


def test_video_clips_count_for_video_presets_only(tmp_path: Path) -> None:
    clip = mp4_bytes(832, 480)
    assert (probe := probe_video(io.BytesIO(clip), len(clip))).width == 832 and probe.height == 480
    with pytest.raises(ProbeError) as truncated:
        probe_video(io.BytesIO(clip[:40]), 40)
    assert truncated.value.code == "TRUNCATED_VIDEO"
    entries = [*dataset_entries(4), ("clip.mp4", clip)]
    assert rejected(validate(tmp_path, entries)) == {"clip.mp4": "VIDEO_NOT_SUPPORTED"}
    video_rules = generic_rules(DatasetKind.VIDEO).model_copy(update={"min_side": 32})
    report = validate(tmp_path, entries, rules=video_rules)
    assert "clip.mp4" in {i.key for i in report.accepted} and report.ok


def test_generic_rules_are_the_most_permissive_preset_thresholds() -> None:
    images = generic_rules(DatasetKind.IMAGES)
    assert (images.min_side, images.min_images, images.recommended_resolution) == (32, 4, None)
    assert generic_rules(DatasetKind.VIDEO).modality == "video"
    with pytest.raises(InvalidInput) as unknown:
        rules_for_preset("sdxxl")
    assert unknown.value.code == "UNKNOWN_PRESET"


def test_skipped_entries_are_not_data(tmp_path: Path) -> None:
    report = validate(tmp_path, [*dataset_entries(4), ("loraforge.yaml", b"preset: tiny-sd\n")], skip=frozenset({"loraforge.yaml"}))
    assert report.ok and not report.rejected


@pytest.mark.parametrize(("text", "fragment"), [
    (b"preset: [tiny-sd\n", "not valid YAML at line"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"preset: tiny-sd\nepochs: 3\n", "epochs: Extra inputs are not permitted"),
    (b"hyperparameters:\n  steps: many\n", "hyperparameters.steps"),
    (b"a: &x [1]\nb: *x\n", "aliases"),
    (b"\xff\xfe", "not UTF-8"),
    (b"# " + b"x" * 70_000, "limit is 65536"),
])
def test_invalid_drop_configs_say_what_is_wrong(text: bytes, fragment: str) -> None:
    with pytest.raises(DropConfigError) as refused:
        parse_drop_config(text)
    assert refused.value.code == "INVALID_DROP_CONFIG"
    assert fragment in refused.value.message


def test_drop_config_defaults_and_names() -> None:
    assert parse_drop_config(None).preset == "tiny-sd"
    assert parse_drop_config(b"").preset == "tiny-sd"
    config = parse_drop_config(b"preset: sdxl\ntrigger_word: ohwx\nhyperparameters: {steps: 500}\n")
    assert (config.preset, config.trigger_word, config.hyperparameters.steps) == ("sdxl", "ohwx", 500)
    assert dataset_name("my char (v2)+final") == "my char -v2-final"
    assert dataset_name("...") == "dataset"


@pytest.mark.parametrize("text", [
    b"preset: " + b"[" * 5_000 + b"]" * 5_000 + b"\n",
    b"{a: " * 3_000 + b"1" + b"}" * 3_000 + b"\n",
    b"[" * 30_000,
], ids=["nested-lists", "nested-maps", "unclosed-brackets"])
def test_a_deeply_nested_drop_config_is_refused_not_a_recursion_error(text: bytes) -> None:
    # Given a loraforge.yaml under the size bound whose brackets nest thousands of levels deep
    # When it is parsed
    with pytest.raises(DropConfigError) as refused:
        parse_drop_config(text)
    # Then it is a clear INVALID_DROP_CONFIG (a RecursionError would escape ingest, leaving the drop's dataset validating)
    assert refused.value.code == "INVALID_DROP_CONFIG"
    assert "nested" in refused.value.message
