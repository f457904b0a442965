"""What the notify function does with each stream record (sample events from events/, in-memory channels)."""

from __future__ import annotations

import json

import pytest

from loraforge.dal.jobs_table import strip_keys
from loraforge.logic.notify import StreamChange, StreamNotifier
from loraforge.models import Dataset, Job
from loraforge.notifications.user_webhooks import WebhookEventType
from tests.support.events import load_event
from tests.unit.notify.fakes import JobStore, MemoryOnce, Recorder, notify_ports


def only_record(name: str) -> dict:
    [record] = load_event(name)["Records"]
    return record


def job_from(record: dict, image: str = "NewImage") -> Job:
    change = StreamChange.from_record(record)
    return Job.model_validate(strip_keys(change.new_image if image == "NewImage" else change.old_image))


def with_new_image(record: dict, **fields: dict) -> dict:
    record["dynamodb"]["NewImage"].update(fields)
    return record


def test_a_failed_job_gets_an_email_a_webhook_and_an_event():
    # Given the running -> failed record of a job with an email address and a webhook
    recorder = Recorder()
    notifier = StreamNotifier(notify_ports(recorder))
    # When it is handled
    notifier.handle(only_record("dynamodb_stream_job_failed_notify"))
    # Then one email (failed, GPU_OOM), one job.failed webhook and one state-change event
    [email] = recorder.emails
    assert email.attributes["event"] == "job.failed" and "GPU_OOM" in email.body
    [(delivery, delay)] = recorder.webhooks
    assert delivery.event_type == WebhookEventType.FAILED and delay == 0 and delivery.url == "https://hooks.example.com/loraforge"
    body = json.loads(delivery.payload)
    assert body["type"] == "job.failed" and body["id"] == delivery.webhook_id and body["data"]["error"]["code"] == "GPU_OOM"
    assert "version" not in body["data"] and "dispatch_token" not in body["data"]  # the public job resource
    [event] = recorder.events
    assert event.detail_type == "Training Job State Change"
    assert event.detail["status"] == "failed" and event.detail["previous_status"] == "running" and event.detail["error"]["code"] == "GPU_OOM"
    # and the address is not subscribed again on a MODIFY (that happens on INSERT)
    assert recorder.subscriptions == []


def test_the_same_record_twice_notifies_once_with_a_stable_webhook_id():
    recorder, once = Recorder(), MemoryOnce()
    record = only_record("dynamodb_stream_job_failed_notify")
    StreamNotifier(notify_ports(recorder, once=once)).handle(record)
    StreamNotifier(notify_ports(recorder, once=once)).handle(record)
    assert (len(recorder.emails), len(recorder.events), len(recorder.webhooks)) == (1, 1, 1)
    # A fresh plan of the same record names the same webhook-id (what a receiver deduplicates on)
    again = Recorder()
    StreamNotifier(notify_ports(again)).handle(record)
    assert again.webhooks[0][0].webhook_id == recorder.webhooks[0][0].webhook_id


def test_a_change_that_is_not_a_status_change_notifies_nobody():
    # Given a progress update (status unchanged)
    record = only_record("dynamodb_stream_job_failed_notify")
    record["dynamodb"]["NewImage"]["status"] = record["dynamodb"]["OldImage"]["status"]
    recorder = Recorder()
    # When it is handled / Then nothing is sent
    assert StreamNotifier(notify_ports(recorder)).handle(record) == []
    assert (recorder.emails, recorder.events, recorder.webhooks) == ([], [], [])


def test_running_emails_only_when_the_job_asked_but_always_webhooks_and_events():
    # Given starting -> running records of a job with and without notify.on_running
    for on_running, expected_emails in ((False, 0), (True, 1)):
        record = only_record("dynamodb_stream_job_failed_notify")
        record["dynamodb"]["OldImage"]["status"] = {"S": "starting"}
        record["dynamodb"]["NewImage"]["status"] = {"S": "running"}
        record["dynamodb"]["NewImage"]["notify"]["M"]["on_running"] = {"BOOL": on_running}
        recorder = Recorder()
        StreamNotifier(notify_ports(recorder)).handle(record)
        assert len(recorder.emails) == expected_emails
        assert [d.event_type for d, _ in recorder.webhooks] == [WebhookEventType.RUNNING]
        assert [e.detail["status"] for e in recorder.events] == ["running"]


def test_a_new_job_with_an_email_subscribes_it_and_announces_queued():
    # Given the INSERT of a queued job with notify.email
    recorder = Recorder()
    record = only_record("dynamodb_stream_job_queued")
    job = job_from(record)
    # When it is handled
    StreamNotifier(notify_ports(recorder)).handle(record)
    # Then the address is subscribed for the owner, an event says queued, and no email or webhook is sent yet
    assert job.notify.email == "user-a@example.com"
    assert recorder.subscriptions == [(job.owner, "user-a@example.com")]
    assert [(e.detail["status"], e.detail["previous_status"]) for e in recorder.events] == [("queued", None)]
    assert recorder.emails == [] and recorder.webhooks == []


def test_a_checkpoint_record_becomes_a_job_checkpoint_webhook():
    # Given a checkpoint artifact INSERT and its job (with a webhook) in the table
    record = only_record("dynamodb_stream_checkpoint_notify")
    job = job_from(only_record("dynamodb_stream_job_failed_notify"), "OldImage")
    recorder = Recorder()
    # When it is handled
    StreamNotifier(notify_ports(recorder, jobs=JobStore({job.id: job}))).handle(record)
    # Then a job.checkpoint webhook carries the job and the checkpoint; no email, no EventBridge event
    [(delivery, _)] = recorder.webhooks
    body = json.loads(delivery.payload)
    assert body["type"] == "job.checkpoint" and body["data"]["id"] == job.id and body["data"]["checkpoint"]["step"] == 250
    assert recorder.emails == [] and recorder.events == []


def test_a_rejected_dataset_gets_an_email_and_a_validation_event():
    recorder = Recorder()
    StreamNotifier(notify_ports(recorder)).handle(only_record("dynamodb_stream_dataset_invalid_notify"))
    [email] = recorder.emails
    assert email.attributes["event"] == "dataset.invalid" and "TOO_FEW_IMAGES" in email.body
    [event] = recorder.events
    assert event.detail_type == "Dataset Validation Result" and event.detail["status"] == "invalid"
    assert event.detail["errors"][0]["code"] == "TOO_FEW_IMAGES"


def test_records_that_are_not_jobs_datasets_or_checkpoints_are_ignored():
    record = only_record("dynamodb_stream_job_failed_notify")
    record["dynamodb"]["Keys"]["sk"] = {"S": "EVT#000000000012"}
    recorder = Recorder()
    assert StreamNotifier(notify_ports(recorder)).handle(record) == []


def test_a_failed_effect_is_retried_without_repeating_the_others():
    # Given EventBridge refuses the first call
    recorder, once = Recorder(fail_events=1), MemoryOnce()
    record = only_record("dynamodb_stream_job_failed_notify")
    # When the record fails, and the retry of the batch handles it again
    with pytest.raises(RuntimeError):
        StreamNotifier(notify_ports(recorder, once=once)).handle(record)
    StreamNotifier(notify_ports(recorder, once=once)).handle(record)
    # Then the event went out once, and the email and webhook sent before the failure were not repeated
    assert (len(recorder.emails), len(recorder.webhooks), len(recorder.events)) == (1, 1, 1)


def test_after_a_failed_record_later_records_of_the_same_job_wait_for_the_retry():
    # Given a batch where the first change of a job fails (EventBridge throttled) and a later change of it follows
    recorder = Recorder(fail_events=1)
    notifier = StreamNotifier(notify_ports(recorder))
    first = only_record("dynamodb_stream_job_failed_notify")
    later = with_new_image(only_record("dynamodb_stream_job_failed_notify"), version={"N": "8"})
    with pytest.raises(RuntimeError):
        notifier.handle(first)
    # When the later record is handled in the same batch
    # Then it is held back (retried in order) instead of notifying ahead of the earlier change
    with pytest.raises(Exception, match="earlier record"):
        notifier.handle(later)
    assert recorder.events == []


def test_a_job_failed_for_an_invalid_dataset_is_emailed_the_rejection_reasons():
    # Given a job that failed with DATASET_INVALID, and its dataset's validation result in the table
    record = only_record("dynamodb_stream_job_failed_notify")
    record["dynamodb"]["NewImage"]["error"]["M"]["code"] = {"S": "DATASET_INVALID"}
    dataset = Dataset.model_validate(strip_keys(StreamChange.from_record(only_record("dynamodb_stream_dataset_invalid_notify")).new_image))
    job = job_from(record)
    recorder = Recorder()
    # When it is handled
    StreamNotifier(notify_ports(recorder, jobs=JobStore(datasets={job.dataset_id: dataset}))).handle(record)
    # Then the email gives the dataset's reasons and rejected files, and what to fix
    [email] = recorder.emails
    assert "TOO_FEW_IMAGES" in email.body and "raw/IMG_0042.HEIC: NOT_AN_IMAGE" in email.body
    assert f"GET /v1/datasets/{job.dataset_id}" in email.body
