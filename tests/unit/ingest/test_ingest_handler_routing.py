"""The handler's routing on the sample events, with no AWS at all: keys that are not ingest work are answered
without a single S3 or DynamoDB call (every folder file of a drop raises an event)."""

from __future__ import annotations

from typing import Any

import pytest

from loraforge.dal.keys import decode_event_key, parse_drop_key
from loraforge.settings import reset_settings
from tests.support.events import load_event

SAMPLE_BUCKET = "loraforge-databucket-1q2w3e4r5t6y"


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("BUCKET_NAME", SAMPLE_BUCKET)
    reset_settings()

    def no_aws(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this event needs no AWS call")

    monkeypatch.setattr("loraforge.dal.clients.client", no_aws)
    monkeypatch.setattr("loraforge.dal.jobs_table.client", no_aws)
    monkeypatch.setattr("loraforge.dal.storage.client", no_aws)
    from functions.ingest.app import lambda_handler

    yield lambda_handler
    reset_settings()


@pytest.mark.parametrize(("event_name", "reason"), [
    ("s3_folder_file_eventbridge", "FOLDER_FILE"),
    ("s3_manifest_written_eventbridge", "NOT_A_TRIGGER_KEY"),
])
def test_keys_that_are_not_ingest_work_are_ignored_without_io(handler: Any, lambda_context: Any, event_name: str, reason: str) -> None:
    outcome = handler(load_event(event_name), lambda_context)
    assert (outcome["action"], outcome["reason"], outcome["dataset_id"]) == ("ignored", reason, None)


def test_events_from_another_bucket_are_ignored(handler: Any, lambda_context: Any) -> None:
    event = load_event("s3_object_created_eventbridge")
    event["detail"]["bucket"]["name"] = "not-ours"
    assert handler(event, lambda_context)["reason"] == "WRONG_BUCKET"


def test_the_special_characters_sample_decodes_to_its_drop() -> None:
    key = decode_event_key(load_event("s3_drop_zip_special_chars_eventbridge")["detail"]["object"]["key"])
    assert key == "incoming/user-a/my char+v2 (1).zip"
    assert parse_drop_key(key).name == "my char+v2 (1)"
