"""S3 key layout and decoding (DESIGN §5), ids and owners."""

import pytest

from loraforge.dal import keys
from loraforge.models.common import ID_PATTERN, is_valid_owner, new_id


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("incoming/alice/my+char.zip", "incoming/alice/my char.zip"),
        ("incoming%2Falice%2Fmychar.zip", "incoming/alice/mychar.zip"),
        ("incoming/alice/caf%C3%A9.zip", "incoming/alice/café.zip"),
        ("incoming/alice/a%2Bb.zip", "incoming/alice/a+b.zip"),
    ],
)
def test_event_keys_are_form_decoded(raw, decoded):
    # Given a key as S3/EventBridge deliver it / When decoded / Then it is the object's real key
    assert keys.decode_event_key(raw) == decoded


def test_drop_keys_trigger_only_for_zip_or_folder_config():
    # Given drop-zone keys / When parsed / Then only a top-level zip or a folder's loraforge.yaml triggers work
    zip_ref = keys.parse_drop_key("incoming/alice/mychar.zip")
    assert zip_ref and zip_ref.owner == "alice" and zip_ref.name == "mychar" and not zip_ref.is_folder
    folder_ref = keys.parse_drop_key("incoming/alice/mychar/loraforge.yaml")
    assert folder_ref and folder_ref.is_folder and folder_ref.folder_prefix == "incoming/alice/mychar/"
    assert keys.parse_drop_key("incoming/alice/mychar/img1.png") is None
    assert keys.parse_drop_key("incoming/alice/.zip") is None
    assert keys.parse_drop_key("incoming/bad owner/x.zip") is None
    assert keys.parse_drop_key("datasets/alice/ds_x/dataset.zip") is None


def test_dataset_archive_keys_round_trip():
    key = keys.dataset_archive_key("alice", "ds_0123456789abcdefghjk")
    ref = keys.parse_dataset_archive_key(key)
    assert ref and ref.owner == "alice" and ref.dataset_id == "ds_0123456789abcdefghjk"
    assert keys.parse_dataset_archive_key("datasets/alice/ds_x/other.zip") is None


def test_artifact_keys_stay_inside_the_job_prefix():
    # Given a job / When an artifact key is built / Then it lives in the kind's folder under the job prefix
    assert keys.job_artifact_key("alice", "job_x", "checkpoint", "a.safetensors") == "jobs/alice/job_x/checkpoints/a.safetensors"
    assert keys.job_artifact_key("alice", "job_x", "final", "lora.safetensors").startswith(keys.job_prefix("alice", "job_x"))
    for bad in ("../x", "a/b", "..", ""):
        with pytest.raises(ValueError):
            keys.job_artifact_key("alice", "job_x", "sample", bad)


def test_ids_are_prefixed_unique_and_match_the_pattern():
    import re

    ids = {new_id("job") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.match(ID_PATTERN, i) for i in ids)


@pytest.mark.parametrize("owner", ["", "a/b", "../x", " a", "a" * 129])
def test_owners_that_could_escape_a_prefix_are_invalid(owner):
    assert not is_valid_owner(owner)
