"""Issue 7 acceptance against moto server: a job's status change on the real stream, through the real handlers,
becomes one email (SNS), one EventBridge event and one signed webhook POST, and stays one when redelivered."""

from __future__ import annotations

import json

from standardwebhooks.webhooks import Webhook

from functions.notify import app as notify_app
from functions.notify import webhook_app
from loraforge.dal.clients import client
from loraforge.dal.jobs_table import JobsTable
from loraforge.models import (
    Artifact,
    ArtifactKind,
    Cost,
    Dataset,
    DatasetError,
    DatasetStats,
    DatasetStatus,
    ErrorKind,
    JobError,
    JobResult,
    JobStatus,
    Progress,
    RejectedItem,
    utcnow,
)
from loraforge.secrets_store import signing_key
from loraforge.signing import owner_webhook_secret
from tests.integration.notify.helpers import (
    moto_queue_messages,
    new_job,
    run_to_running,
    sns_sent,
    sqs_event,
    status_change,
    stream_records,
)

SHA = "ab" * 32


def succeed(table: JobsTable, job):
    lora = Artifact(kind=ArtifactKind.FINAL, step=100, key=f"jobs/{job.owner}/{job.id}/final/mychar.safetensors", size=1234, sha256=SHA)
    return table.transition(job, JobStatus.SUCCEEDED, result=JobResult(lora=lora, steps=100, final_loss=0.0912),
                            progress=Progress(step=100, total_steps=100, percent=100.0, loss=0.0912),
                            cost=Cost(estimated_usd=0.05, actual_usd=0.04, billed_seconds=210.0))


def test_a_job_that_succeeds_gives_one_email_one_event_and_one_signed_webhook(
        notify_stack, allow_loopback, receiver, event_capture, lambda_context):
    # Given a running job of alice's with a webhook receiver on loopback (the local stack's setting allows it)
    table = JobsTable()
    job = run_to_running(table, table.create_job(new_job("alice", webhook_url=receiver.url)))
    # When it succeeds and the running -> succeeded stream record reaches the notify function
    job = succeed(table, job)
    record = status_change(stream_records(notify_stack.table), job.id, "running", "succeeded")
    response = notify_app.lambda_handler({"Records": [record]}, lambda_context)

    # Then nothing failed, and SNS got exactly one message with the filterable attributes
    assert response == {"batchItemFailures": []}
    sent = sns_sent(notify_stack.topic_arn)
    assert len(sent) == 1
    _, body, subject, attributes, _ = sent[0]
    assert {k: v["Value"] for k, v in attributes.items()} == {
        "owner": "alice", "event": "job.succeeded", "job_id": job.id, "preset": "tiny-sd"}
    assert "succeeded" in subject and len(subject) < 100
    assert f"loraforge jobs download {job.id}" in body and "0.0912" in body and f"jobs/alice/{job.id}/final/mychar.safetensors" in body
    # and EventBridge got exactly one job state change, with the summary as detail
    events = event_capture()
    assert [e["detail-type"] for e in events] == ["Training Job State Change"]
    assert events[0]["source"] == "loraforge"
    detail = events[0]["detail"]
    assert (detail["id"], detail["status"], detail["previous_status"], detail["owner"]) == (job.id, "succeeded", "running", "alice")
    assert detail["result"]["lora_key"] == f"jobs/alice/{job.id}/final/mychar.safetensors"
    # and one webhook delivery is queued
    queued = moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])
    assert len(queued) == 1 and queued[0][1] == 0

    # When the delivery function runs on that message
    delivery_response = webhook_app.lambda_handler(sqs_event([queued[0][0]]), lambda_context)

    # Then the receiver got one POST whose signature an independent Standard Webhooks implementation accepts
    assert delivery_response == {"batchItemFailures": []}
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    secret = owner_webhook_secret(signing_key(), "alice")
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job.id and payload["data"]["status"] == "succeeded"
    assert request.headers["webhook-id"] == payload["id"] == queued[0][0]["webhook_id"]
    assert payload["data"]["result"]["lora"]["key"].endswith("mychar.safetensors")


def test_redelivering_the_same_stream_batch_and_sqs_message_repeats_nothing(
        notify_stack, allow_loopback, receiver, event_capture, lambda_context):
    # Given a job's whole life on the stream (insert, starting, running, succeeded) handled once
    table = JobsTable()
    job = run_to_running(table, table.create_job(new_job("alice", webhook_url=receiver.url, on_running=True)))
    succeed(table, job)
    batch = {"Records": [r for r in stream_records(notify_stack.table) if r["dynamodb"]["Keys"]["sk"]["S"] == "META"]}
    assert notify_app.lambda_handler(batch, lambda_context) == {"batchItemFailures": []}
    emails, events = len(sns_sent(notify_stack.topic_arn)), event_capture()
    queued = moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])
    webhook_app.lambda_handler(sqs_event([body for body, _ in queued]), lambda_context)
    posts = len(receiver.requests)
    # (one email each for running and succeeded; an event per status change; webhooks for running and succeeded)
    assert (emails, len(events), len(queued), posts) == (2, 4, 2, 2)

    # When the same batch and the same SQS messages are delivered again
    assert notify_app.lambda_handler(batch, lambda_context) == {"batchItemFailures": []}
    webhook_app.lambda_handler(sqs_event([body for body, _ in queued]), lambda_context)

    # Then no email, event, queued webhook or POST is added
    assert len(sns_sent(notify_stack.topic_arn)) == emails
    assert event_capture() == []
    assert len(moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])) == len(queued)
    assert len(receiver.requests) == posts
    # and each delivery carried a distinct, stable webhook-id
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 2


def test_a_failed_jobs_email_names_the_error_the_message_and_the_next_step(notify_stack, lambda_context):
    # Given a running job that fails with a user error (out of GPU memory)
    table = JobsTable()
    job = run_to_running(table, table.create_job(new_job("bob")))
    error = JobError(code="GPU_OOM", message="CUDA out of memory at step 12 (batch 4, 1024 px)", kind=ErrorKind.USER)
    table.transition(job, JobStatus.FAILED, error=error, progress=Progress(step=12, total_steps=100, percent=12.0, loss=0.31))
    # When the notify function sees the change
    record = status_change(stream_records(notify_stack.table), job.id, "running", "failed")
    notify_app.lambda_handler({"Records": [record]}, lambda_context)
    # Then the one email names the code, the message and what to change
    [(_, body, subject, attributes, _)] = sns_sent(notify_stack.topic_arn)
    assert "GPU_OOM" in subject and attributes["event"]["Value"] == "job.failed"
    assert "GPU_OOM" in body and "CUDA out of memory at step 12 (batch 4, 1024 px)" in body
    assert "resolution" in body and "batch_size" in body


def test_a_system_failure_email_gives_the_retry_command(notify_stack, lambda_context):
    table = JobsTable()
    job = run_to_running(table, table.create_job(new_job("bob")))
    error = JobError(code="WORKER_SILENT", message="no event from the worker for 15 minutes", kind=ErrorKind.SYSTEM)
    table.transition(job, JobStatus.FAILED, error=error)
    notify_app.lambda_handler({"Records": [status_change(stream_records(notify_stack.table), job.id, "running", "failed")]}, lambda_context)
    [(_, body, _, _, _)] = sns_sent(notify_stack.topic_arn)
    assert "WORKER_SILENT" in body and "no event from the worker for 15 minutes" in body
    assert f"loraforge jobs retry {job.id}" in body


def test_notify_email_subscribes_the_address_once_with_the_owners_filter_policy(notify_stack, lambda_context):
    # Given two jobs of carol's with the same notify.email
    table = JobsTable()
    first = table.create_job(new_job("carol", email="carol@example.com"))
    second = table.create_job(new_job("carol", email="Carol@Example.com"))
    inserts = [r for r in stream_records(notify_stack.table) if r["eventName"] == "INSERT"]
    assert {r["dynamodb"]["Keys"]["pk"]["S"] for r in inserts} == {f"JOB#{first.id}", f"JOB#{second.id}"}
    # When both INSERT records are handled, and the batch is delivered again
    notify_app.lambda_handler({"Records": inserts}, lambda_context)
    notify_app.lambda_handler({"Records": inserts}, lambda_context)
    # Then the topic has one email subscription for the address, filtered on carol's messages
    subs = [s for s in client("sns").list_subscriptions_by_topic(TopicArn=notify_stack.topic_arn)["Subscriptions"]
            if s["Protocol"] == "email"]
    assert [s["Endpoint"] for s in subs] == ["carol@example.com"]
    attrs = client("sns").get_subscription_attributes(SubscriptionArn=subs[0]["SubscriptionArn"])["Attributes"]
    assert json.loads(attrs["FilterPolicy"]) == {"owner": ["carol"]}


def test_a_new_checkpoint_sends_a_job_checkpoint_webhook(notify_stack, allow_loopback, receiver, lambda_context):
    # Given a running job with a webhook, and a checkpoint recorded for it
    table = JobsTable()
    job = run_to_running(table, table.create_job(new_job("dave", webhook_url=receiver.url)))
    checkpoint = Artifact(kind=ArtifactKind.CHECKPOINT, step=50, key=f"jobs/dave/{job.id}/checkpoints/step_50.safetensors",
                          size=99, sha256=SHA, created_at=utcnow())
    table.put_artifact(job.id, checkpoint)
    [record] = [r for r in stream_records(notify_stack.table) if r["dynamodb"]["Keys"]["sk"]["S"].startswith("ART#checkpoint#")]
    # When the artifact's INSERT record is handled (twice: redelivery) and the delivery runs
    notify_app.lambda_handler({"Records": [record]}, lambda_context)
    notify_app.lambda_handler({"Records": [record]}, lambda_context)
    queued = moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])
    webhook_app.lambda_handler(sqs_event([body for body, _ in queued]), lambda_context)
    # Then one job.checkpoint event arrives, carrying the job and the checkpoint
    assert len(queued) == 1 and len(receiver.requests) == 1
    payload = Webhook(owner_webhook_secret(signing_key(), "dave")).verify(receiver.requests[0].body, receiver.requests[0].headers)
    assert payload["type"] == "job.checkpoint" and payload["data"]["id"] == job.id
    assert payload["data"]["checkpoint"]["step"] == 50 and payload["data"]["checkpoint"]["key"].endswith("step_50.safetensors")


def test_a_rejected_dataset_gives_one_email_and_one_validation_event(notify_stack, event_capture, lambda_context):
    # Given a dataset that validation rejects
    table = JobsTable()
    now = utcnow()
    ds = table.create_dataset(Dataset(id="ds_0000000000bbbbbbbbbb", owner="erin", name="faces", status=DatasetStatus.VALIDATING,
                                      created_at=now, updated_at=now, archive_key="datasets/erin/ds_0000000000bbbbbbbbbb/dataset.zip"))
    rejected = ds.model_copy(update={"status": DatasetStatus.INVALID, "stats": DatasetStats(images=1, rejected=1),
                                     "errors": [DatasetError(code="TOO_FEW_IMAGES", message="1 usable image; at least 5 needed")],
                                     "rejected_sample": [RejectedItem(key="x.gif", reason="NOT_AN_IMAGE", message="GIF is not supported")]})
    table.save_dataset(rejected, expected_version=ds.version, expected_status=DatasetStatus.VALIDATING)
    # When its records reach the notify function
    records = [r for r in stream_records(notify_stack.table) if r["dynamodb"]["Keys"]["pk"]["S"] == f"DS#{ds.id}"]
    notify_app.lambda_handler({"Records": records}, lambda_context)
    # Then one email for erin says why, and one `Dataset Validation Result` event is on the bus
    [(_, body, subject, attributes, _)] = sns_sent(notify_stack.topic_arn)
    assert attributes["owner"]["Value"] == "erin" and attributes["event"]["Value"] == "dataset.invalid"
    assert "TOO_FEW_IMAGES" in subject and "x.gif: NOT_AN_IMAGE" in body
    [event] = event_capture()
    assert event["detail-type"] == "Dataset Validation Result" and event["detail"]["status"] == "invalid"
