"""The event side: an event produced by moto itself (S3 → EventBridge → SQS capture queue) through the real
handler, and failures that are not the user's, which must raise (retry, then IngestDLQ) and lose nothing."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote_plus

import pytest
from botocore.exceptions import ClientError
from pydantic import ValidationError

from loraforge.dal.clients import client
from loraforge.dal.jobs_table import JobsTable
from loraforge.dal.storage import Storage
from loraforge.models.status import DatasetStatus
from tests.integration.ingest.conftest import OWNER, IngestRig
from tests.unit.ingest.archive_builders import build_zip, dataset_entries


def capture_s3_events(ingest: IngestRig) -> str:
    """EventBridge on the bucket, a rule on the default bus like the template's, an SQS queue as its target."""
    sqs, events = client("sqs"), client("events")
    ingest.s3.put_bucket_notification_configuration(Bucket=ingest.stack.bucket,
                                                    NotificationConfiguration={"EventBridgeConfiguration": {}})
    queue_url = sqs.create_queue(QueueName="ingest-capture")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["aws.s3"], "detail-type": ["Object Created"], "detail": {"bucket": {"name": [ingest.stack.bucket]},
                                                                                     "object": {"key": [{"prefix": "incoming/"}]}}}
    events.put_rule(Name="ingest-capture", EventPattern=json.dumps(pattern), EventBusName="default")
    events.put_targets(Rule="ingest-capture", EventBusName="default", Targets=[{"Id": "capture", "Arn": queue_arn}])
    return queue_url


def test_an_event_produced_by_moto_goes_through_the_handler(ingest: IngestRig) -> None:
    # Given S3 → EventBridge → SQS, and a drop whose name has a space and a '+'
    queue_url = capture_s3_events(ingest)
    key = f"incoming/{OWNER}/my char+v2.zip"
    ingest.put(key, build_zip(dataset_entries(4)))
    messages = client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert len(messages) == 1
    event: dict[str, Any] = json.loads(messages[0]["Body"])
    assert (event["source"], event["detail-type"]) == ("aws.s3", "Object Created")
    # moto 5.2.5 puts the raw key in EventBridge events, while S3 form-encodes it (space → '+', '+' → %2B) as in its
    # other notifications, which is what powertools' S3EventBridgeNotificationObject.key undoes. Encode it as S3 does.
    assert event["detail"]["object"]["key"] == key
    event["detail"]["object"]["key"] = quote_plus(key, safe="/")
    # When the handler gets moto's event (its own envelope, epoch time, eTag spelling, version id)
    outcome = ingest.handle(event)
    # Then the key decodes to the real object, which becomes a ready dataset and a job
    dataset = ingest.dataset(outcome["dataset_id"])
    assert (dataset.source_key, dataset.name, dataset.status) == (key, "my char-v2", DatasetStatus.READY)
    assert len(ingest.jobs()) == 1
    # And a second delivery of the same event is recognised
    assert ingest.handle(event)["action"] == "duplicate"
    assert len(ingest.jobs()) == 1


def throttle_once(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, error: ClientError) -> list[int]:
    original = getattr(target, name)
    calls: list[int] = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)
    return calls


def test_s3_throttling_raises_for_a_retry_and_the_retry_finishes_the_drop(ingest: IngestRig, monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    event = ingest.upload(f"incoming/{OWNER}/slow.zip", build_zip(dataset_entries(4)))
    slow_down = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}, "GetObject")
    throttle_once(monkeypatch, Storage, "open", slow_down)
    # When S3 throttles the first delivery
    with pytest.raises(ClientError):
        ingest.handle(event)
    # Then the failure is logged with its reason, and the dataset waits in validating (nothing half-written)
    failure = next(r for r in caplog.records if r.levelname == "ERROR" and r.name == "loraforge")
    assert "IngestDLQ" in failure.getMessage() and failure.exc_info and "SlowDown" in str(failure.exc_info[1])
    assert getattr(failure, "key", None) == f"incoming/{OWNER}/slow.zip"
    datasets = JobsTable().list_datasets_by_owner(OWNER).items
    assert [d.status for d in datasets] == [DatasetStatus.VALIDATING] and ingest.jobs() == []
    # When the event source retries
    outcome = ingest.handle(event)
    # Then the drop completes once
    assert outcome["dataset_status"] == "ready" and len(ingest.jobs()) == 1


def test_dynamodb_throttling_while_queueing_the_job_is_retried_without_a_second_job(ingest: IngestRig,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    event = ingest.upload(f"incoming/{OWNER}/busy.zip", build_zip(dataset_entries(4)))
    throttled = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "PutItem")
    throttle_once(monkeypatch, JobsTable, "create_job", throttled)
    with pytest.raises(ClientError):
        ingest.handle(event)
    # The dataset is already ready; the retry queues the job it still lacks
    assert [d.status for d in JobsTable().list_datasets_by_owner(OWNER).items] == [DatasetStatus.READY]
    outcome = ingest.handle(event)
    jobs = ingest.jobs()
    assert len(jobs) == 1 and outcome["job_id"] == jobs[0].id
    assert ingest.dataset(outcome["dataset_id"]).job_id == jobs[0].id
    assert ingest.handle(event)["action"] == "duplicate" and len(ingest.jobs()) == 1


def test_a_retry_after_a_crash_between_job_and_dataset_adopts_the_job(ingest: IngestRig, monkeypatch: pytest.MonkeyPatch) -> None:
    from loraforge.logic import drop_to_train

    event = ingest.upload(f"incoming/{OWNER}/crash.zip", build_zip(dataset_entries(4)))
    # Given a first delivery that queued the job and died before recording it on the dataset
    monkeypatch.setattr(drop_to_train, "_record_job", lambda dataset, job_id: (_ for _ in ()).throw(TimeoutError("lambda timed out")))
    with pytest.raises(TimeoutError):
        ingest.handle(event)
    monkeypatch.undo()
    # When the event is retried
    outcome = ingest.handle(event)
    # Then the job is found and recorded, not created again
    jobs = ingest.jobs()
    assert len(jobs) == 1 and outcome["job_id"] == jobs[0].id == ingest.dataset(outcome["dataset_id"]).job_id


def test_a_malformed_event_raises_so_it_is_dead_lettered(ingest: IngestRig) -> None:
    event = ingest.upload(f"incoming/{OWNER}/x.zip", build_zip(dataset_entries(4)))
    del event["detail"]["object"]["key"]
    with pytest.raises(ValidationError):
        ingest.handle(event)
