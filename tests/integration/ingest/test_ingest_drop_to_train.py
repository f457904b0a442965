"""Drop-to-train end to end against moto: a zip (or a folder + loraforge.yaml) under incoming/ becomes a
ready dataset and exactly one queued job, however many times S3 and EventBridge deliver it."""

from __future__ import annotations

import pytest

from loraforge.dal.keys import dataset_archive_key
from loraforge.models.job import JobSource
from loraforge.models.status import DatasetStatus, JobStatus
from loraforge.settings import reset_settings
from tests.integration.ingest.conftest import OWNER, IngestRig
from tests.unit.ingest.archive_builders import build_zip, dataset_entries, image_bytes

YAML = b"""preset: tiny-sd
trigger_word: ohwx
name: my first lora
hyperparameters:
  steps: 40
  rank: 4
samples:
  prompts: ["a photo of [trigger] at the beach"]
notify:
  email: me@example.com
"""


def test_a_valid_zip_becomes_a_ready_dataset_and_one_queued_job(ingest: IngestRig) -> None:
    # Given a zip of six captioned images, Finder clutter and a loraforge.yaml
    data = build_zip([*dataset_entries(6, folder="mychar/"), ("__MACOSX/mychar/._img_000.png", b"junk"),
                      ("mychar/.DS_Store", b"junk"), ("mychar/loraforge.yaml", YAML)])
    # When it is dropped under incoming/<owner>/
    outcome = ingest.drop(f"incoming/{OWNER}/mychar.zip", data)
    # Then the dataset is ready, named after the zip, with its archive copied and a manifest of six images
    assert (outcome["action"], outcome["reason"]) == ("validated", "VALIDATED")
    dataset = ingest.dataset(outcome["dataset_id"])
    assert (dataset.status, dataset.name, dataset.owner) == (DatasetStatus.READY, "mychar", OWNER)
    assert dataset.source_key == f"incoming/{OWNER}/mychar.zip"
    assert dataset.archive_key == dataset_archive_key(OWNER, dataset.id)
    assert ingest.s3.get_object(Bucket=ingest.stack.bucket, Key=dataset.archive_key)["Body"].read() == data
    manifest = ingest.manifest(dataset)
    assert [i["key"] for i in manifest["accepted"]] == [f"mychar/img_00{i}.png" for i in range(6)]
    assert manifest["rejected"] == [] and manifest["errors"] == []
    assert manifest["archive_sha256"] == dataset.archive_sha256 and manifest["archive_size"] == len(data)
    assert dataset.stats.images == 6 and dataset.stats.captioned == 6
    # And exactly one job is queued from loraforge.yaml, recorded on the dataset
    jobs = ingest.jobs()
    assert len(jobs) == 1
    job = jobs[0]
    assert (job.status, job.source, job.dataset_id, job.id) == (JobStatus.QUEUED, JobSource.DROP, dataset.id, dataset.job_id)
    assert (job.preset, job.trigger_word, job.name, job.hyperparameters.steps, job.hyperparameters.rank) == \
        ("tiny-sd", "ohwx", "my first lora", 40, 4)
    assert job.notify.email == "me@example.com" and job.samples.prompts == ["a photo of [trigger] at the beach"]
    assert outcome["job_id"] == job.id


def test_a_zip_without_yaml_trains_with_the_defaults(ingest: IngestRig) -> None:
    outcome = ingest.drop(f"incoming/{OWNER}/plain set.zip", build_zip(dataset_entries(4)))
    job = ingest.jobs()[0]
    assert (job.preset, job.trigger_word, job.name) == ("tiny-sd", None, "plain set")
    assert ingest.dataset(outcome["dataset_id"]).name == "plain set"


def test_the_same_event_twice_and_the_same_zip_uploaded_twice_give_one_dataset_and_one_job(ingest: IngestRig) -> None:
    key = f"incoming/{OWNER}/twice.zip"
    data = build_zip(dataset_entries(4))
    # Given one drop, delivered
    event = ingest.upload(key, data)
    first = ingest.handle(event)
    # When EventBridge delivers the same event again, and the user uploads the same zip to the same key again
    again = ingest.handle(event)
    reupload = ingest.drop(key, data)
    # Then both are recognised as the same drop: one dataset, one job
    assert (again["action"], again["reason"]) == ("duplicate", "DUPLICATE_EVENT")
    assert (reupload["action"], reupload["dataset_id"], reupload["job_id"]) == ("duplicate", first["dataset_id"], first["job_id"])
    assert len(ingest.jobs()) == 1
    assert [d.id for d in _datasets(ingest)] == [first["dataset_id"]]


def test_two_deliveries_racing_on_one_object_version_create_one_job(ingest: IngestRig, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a delivery that is still validating when a duplicate delivery of the same event runs to completion
    from loraforge.logic import drop_to_train

    event = ingest.upload(f"incoming/{OWNER}/race.zip", build_zip(dataset_entries(4)))
    original = drop_to_train._prepare_and_validate
    duplicates: list[dict] = []
    interleaved: list[bool] = []

    def duplicate_finishes_meanwhile(*args, **kwargs):
        result = original(*args, **kwargs)
        if not interleaved:
            interleaved.append(True)
            duplicates.append(ingest.handle(event))
        return result

    monkeypatch.setattr(drop_to_train, "_prepare_and_validate", duplicate_finishes_meanwhile)
    # When the slower delivery finishes
    outcome = ingest.handle(event)
    # Then it notices the other one won: one dataset, one job
    assert duplicates[0]["dataset_status"] == "ready" and duplicates[0]["job_id"]
    assert (outcome["action"], outcome["job_id"]) == ("duplicate", duplicates[0]["job_id"])
    assert len(ingest.jobs()) == 1 and len(_datasets(ingest)) == 1


def test_a_different_zip_at_the_same_key_is_a_new_drop(ingest: IngestRig) -> None:
    key = f"incoming/{OWNER}/iterate.zip"
    first = ingest.drop(key, build_zip(dataset_entries(4)))
    second = ingest.drop(key, build_zip(dataset_entries(5)))
    assert first["dataset_id"] != second["dataset_id"]
    assert {j.dataset_id for j in ingest.jobs()} == {first["dataset_id"], second["dataset_id"]}


def test_folder_mode_zips_the_folder_when_loraforge_yaml_arrives_last(ingest: IngestRig) -> None:
    prefix = f"incoming/{OWNER}/summer trip/"
    # Given the folder's files uploaded one by one: each of them is ignored
    for name, data in [*dataset_entries(5), ("sub/extra.png", image_bytes(40)), (".DS_Store", b"junk")]:
        assert ingest.drop(prefix + name, data)["reason"] == "FOLDER_FILE"
    assert ingest.jobs() == []
    # When loraforge.yaml arrives last
    outcome = ingest.drop(prefix + "loraforge.yaml", YAML)
    # Then the folder becomes one zipped, validated dataset and one job
    dataset = ingest.dataset(outcome["dataset_id"])
    assert (dataset.status, dataset.name) == (DatasetStatus.READY, "summer trip")
    keys = [i["key"] for i in ingest.manifest(dataset)["accepted"]]
    assert keys == [f"img_00{i}.png" for i in range(5)] + ["sub/extra.png"]
    assert ingest.exists(dataset.archive_key)
    assert [j.trigger_word for j in ingest.jobs()] == ["ohwx"]
    # And the yaml delivered again is the same drop
    assert ingest.drop(prefix + "loraforge.yaml", YAML)["action"] == "duplicate"
    assert len(ingest.jobs()) == 1


def test_folder_mode_with_an_invalid_yaml_is_invalid_and_queues_nothing(ingest: IngestRig) -> None:
    prefix = f"incoming/{OWNER}/broken/"
    for name, data in dataset_entries(4):
        ingest.drop(prefix + name, data)
    outcome = ingest.drop(prefix + "loraforge.yaml", b"preset: tiny-sd\ntrigger_word: [oops\n")
    dataset = ingest.dataset(outcome["dataset_id"])
    assert dataset.status == DatasetStatus.INVALID
    assert [e.code for e in dataset.errors] == ["INVALID_DROP_CONFIG"]
    assert "line" in dataset.errors[0].message
    assert ingest.jobs() == []


def test_folder_mode_with_only_the_yaml_is_an_empty_dataset(ingest: IngestRig) -> None:
    outcome = ingest.drop(f"incoming/{OWNER}/nothing/loraforge.yaml", YAML)
    assert outcome["errors"] == ["EMPTY_ARCHIVE"]


def test_a_preset_without_an_endpoint_in_this_deployment_is_refused_with_its_code(ingest: IngestRig,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a deployment that serves only the cpu class, and a drop asking for SDXL (24gb class)
    monkeypatch.setenv("RUNPOD_ENDPOINTS", '{"cpu": "ep-cpu-test"}')
    reset_settings()
    outcome = ingest.drop(f"incoming/{OWNER}/big.zip", build_zip([*dataset_entries(4), ("loraforge.yaml", b"preset: sdxl\n")]))
    # Then the dataset says why nothing can train, and no job is queued
    assert outcome["dataset_status"] == "invalid"
    assert outcome["errors"][0] == "NO_ENDPOINT_FOR_GPU_CLASS"
    assert "RunPodEndpoints" in ingest.dataset(outcome["dataset_id"]).errors[0].message
    assert ingest.jobs() == []


def _datasets(ingest: IngestRig):
    from loraforge.dal.jobs_table import JobsTable

    return JobsTable().list_datasets_by_owner(OWNER, limit=100).items


def test_a_drop_for_a_video_preset_is_a_video_dataset_that_accepts_clips(ingest: IngestRig) -> None:
    from tests.unit.ingest.archive_builders import mp4_bytes

    clips = [(f"clip_{i}.mp4", mp4_bytes(832 + 16 * i, 480)) for i in range(4)]
    outcome = ingest.drop(f"incoming/{OWNER}/dance.zip", build_zip([*clips, ("loraforge.yaml", b"preset: wan21-1.3b\n")]))
    dataset = ingest.dataset(outcome["dataset_id"])
    assert (dataset.status, dataset.kind, dataset.stats.images) == (DatasetStatus.READY, "video", 4)
    assert [j.preset for j in ingest.jobs()] == ["wan21-1.3b"]


def test_a_folder_file_grown_after_the_listing_cannot_carry_the_drop_past_the_size_limit(
    ingest: IngestRig, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a 1 MB dataset limit and a folder listed while its image was small
    from loraforge.dal.storage import Storage
    from loraforge.logic.drop_to_train import _build_folder_zip

    monkeypatch.setenv("MAX_DATASET_BYTES", "1000000")
    reset_settings()
    prefix = f"incoming/{OWNER}/grows/"
    ingest.s3.put_object(Bucket=ingest.stack.bucket, Key=prefix + "a.png", Body=image_bytes(16))
    listing = Storage().list_keys(prefix)

    # When the image is overwritten with a 1.5 MB object before the folder is zipped
    ingest.s3.put_object(Bucket=ingest.stack.bucket, Key=prefix + "a.png", Body=b"\0" * 1_500_000)
    outcome = _build_folder_zip(Storage(), prefix, listing, tmp_path / "folder.zip")

    # Then the drop is refused as too large (the bytes read count, not the listing), not zipped past the limit
    assert not isinstance(outcome, tuple) and outcome.error_codes == ["ARCHIVE_TOO_LARGE"]


@pytest.mark.parametrize("name", ["c++ notes.zip", "50%+off.zip"])
def test_a_drop_is_found_whether_the_event_form_encodes_its_key_or_not(ingest: IngestRig, name: str) -> None:
    # Given a zip whose name has '+', '%' or a space, dropped twice under different names
    data = build_zip(dataset_entries(6, folder="mychar/"))
    encoded_key, raw_key = f"incoming/{OWNER}/enc {name}", f"incoming/{OWNER}/raw {name}"
    encoded_event = ingest.upload(encoded_key, data)  # S3's own form-encoding (' ' -> '+', '+' -> '%2B')
    raw_event = ingest.upload(raw_key, data)
    raw_event["detail"]["object"]["key"] = raw_key  # the key as sent, unencoded (what EventBridge is reported to do)

    # When each event reaches ingest
    outcomes = [ingest.handle(encoded_event), ingest.handle(raw_event)]

    # Then both find their object and validate it; neither is dead-lettered as a missing key
    assert [o["reason"] for o in outcomes] == ["VALIDATED", "VALIDATED"]
    assert [ingest.dataset(o["dataset_id"]).source_key for o in outcomes] == [encoded_key, raw_key]
