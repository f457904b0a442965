"""API uploads: `datasets/<owner>/<id>/dataset.zip` through the presigned POST validates that dataset;
anything else under datasets/ (our own writes, other owners' paths, re-uploads) is ignored with a reason."""

from __future__ import annotations

from loraforge.logic.create_dataset import create_dataset
from loraforge.models.dataset import DatasetKind
from loraforge.models.requests import CreateDatasetRequest
from loraforge.models.status import DatasetStatus
from tests.integration.ingest.conftest import OTHER_OWNER, OWNER, IngestRig
from tests.unit.ingest.archive_builders import build_zip, dataset_entries, image_bytes


def new_dataset(name: str = "portraits", owner: str = OWNER, kind: DatasetKind = DatasetKind.IMAGES):
    dataset, _upload = create_dataset(owner, CreateDatasetRequest(name=name, kind=kind))
    return dataset


def test_an_uploaded_archive_validates_its_dataset_without_queueing_a_job(ingest: IngestRig) -> None:
    # Given a dataset created through the API, awaiting its upload
    dataset = new_dataset()
    data = build_zip([*dataset_entries(5), ("small.png", image_bytes(9, size=(16, 16))), ("loraforge.yaml", b"preset: sdxl\n")])
    # When the archive arrives at its key
    outcome = ingest.drop(dataset.archive_key, data)
    # Then the dataset is ready against the generic rules, with its manifest, and no job is created
    stored = ingest.dataset(dataset.id)
    assert (outcome["action"], stored.status) == ("validated", DatasetStatus.READY)
    assert stored.stats.images == 5 and stored.manifest_key.endswith(f"{dataset.id}/manifest.json")
    assert {r.reason for r in stored.rejected_sample} == {"IMAGE_TOO_SMALL"}
    assert stored.archive_size == len(data) and len(stored.archive_sha256) == 64
    assert ingest.manifest(stored)["dataset_id"] == dataset.id
    assert ingest.jobs() == []


def test_a_broken_upload_makes_the_dataset_invalid(ingest: IngestRig) -> None:
    dataset = new_dataset()
    outcome = ingest.drop(dataset.archive_key, b"%PDF-1.7 not a zip")
    assert outcome["errors"] == ["NOT_A_ZIP"]
    assert ingest.dataset(dataset.id).status == DatasetStatus.INVALID


def test_a_reupload_of_a_validated_dataset_is_ignored_with_a_reason(ingest: IngestRig) -> None:
    dataset = new_dataset()
    ingest.drop(dataset.archive_key, build_zip(dataset_entries(4)))
    before = ingest.dataset(dataset.id)
    # When a different archive is uploaded to the same key later
    outcome = ingest.drop(dataset.archive_key, build_zip(dataset_entries(8)))
    # Then the validated dataset is left as it was, and the outcome says why
    assert (outcome["action"], outcome["reason"]) == ("ignored", "ALREADY_VALIDATED")
    assert "create a new dataset" in outcome["message"]
    assert ingest.dataset(dataset.id).model_dump() == before.model_dump()


def test_the_same_upload_event_twice_validates_once(ingest: IngestRig) -> None:
    dataset = new_dataset()
    event = ingest.upload(dataset.archive_key, build_zip(dataset_entries(4)))
    first = ingest.handle(event)
    version = ingest.dataset(dataset.id).version
    again = ingest.handle(event)
    assert first["action"] == "validated" and again["reason"] == "ALREADY_VALIDATED"
    assert ingest.dataset(dataset.id).version == version


def test_unknown_datasets_and_other_owners_paths_are_ignored(ingest: IngestRig) -> None:
    dataset = new_dataset()
    data = build_zip(dataset_entries(4))
    unknown = ingest.drop(f"datasets/{OWNER}/ds_0000000000aaaaaaaaaa/dataset.zip", data)
    crossed = ingest.drop(f"datasets/{OTHER_OWNER}/{dataset.id}/dataset.zip", data)
    assert unknown["reason"] == crossed["reason"] == "UNKNOWN_DATASET"
    assert ingest.dataset(dataset.id).status == DatasetStatus.AWAITING_UPLOAD


def test_ingest_ignores_its_own_writes(ingest: IngestRig) -> None:
    # Given a drop, whose archive copy and manifest land under datasets/ and raise their own events
    outcome = ingest.drop(f"incoming/{OWNER}/selfie.zip", build_zip(dataset_entries(4)))
    dataset = ingest.dataset(outcome["dataset_id"])
    copy_event = ingest.event_for(dataset.archive_key, ingest.s3.head_object(Bucket=ingest.stack.bucket, Key=dataset.archive_key),
                                  dataset.archive_size)
    manifest_event = ingest.event_for(dataset.manifest_key, ingest.s3.head_object(Bucket=ingest.stack.bucket, Key=dataset.manifest_key),
                                      10)
    # Then those events change nothing
    assert ingest.handle(copy_event)["reason"] == "DROP_ARCHIVE_COPY"
    assert ingest.handle(manifest_event)["reason"] == "NOT_A_TRIGGER_KEY"
    assert len(ingest.jobs()) == 1


def test_an_oversized_upload_is_refused_from_the_event_without_downloading(ingest: IngestRig, monkeypatch) -> None:
    dataset = new_dataset()
    event = ingest.upload(dataset.archive_key, build_zip(dataset_entries(4)))
    event["detail"]["object"]["size"] = 3 * 1024**3
    monkeypatch.setattr("loraforge.dal.storage.Storage.open", lambda *a, **k: (_ for _ in ()).throw(AssertionError("downloaded")))
    outcome = ingest.handle(event)
    assert outcome["errors"] == ["ARCHIVE_TOO_LARGE"]


def test_events_for_another_bucket_are_ignored(ingest: IngestRig) -> None:
    event = ingest.upload(f"incoming/{OWNER}/x.zip", build_zip(dataset_entries(4)))
    event["detail"]["bucket"]["name"] = "someone-elses-bucket"
    assert ingest.handle(event)["reason"] == "WRONG_BUCKET"
    assert ingest.jobs() == []
