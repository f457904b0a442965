"""A Wan 2.2 14B job's LoRA is two files (one per expert): its success email, EventBridge event and signed webhook name
both, through the real notify and webhook-delivery handlers against moto server."""

from __future__ import annotations

from standardwebhooks.webhooks import Webhook

from functions.notify import app as notify_app
from functions.notify import webhook_app
from loraforge.dal.jobs_table import JobsTable
from loraforge.logic.lora_result import lora_result
from loraforge.models import Artifact, ArtifactKind, Cost, JobStatus, Progress
from loraforge.secrets_store import signing_key
from loraforge.signing import owner_webhook_secret
from tests.integration.notify.helpers import moto_queue_messages, new_job, run_to_running, sns_sent, sqs_event, status_change, stream_records

PARTS = ("high_noise", "low_noise")


def test_a_split_lora_is_named_whole_by_the_email_the_event_and_the_webhook(
        notify_stack, allow_loopback, receiver, event_capture, lambda_context):
    # Given a running job of alice's that succeeds with a LoRA in two files, one per expert
    table = JobsTable()
    job = run_to_running(table, table.create_job(new_job("alice", webhook_url=receiver.url)))
    keys = [f"jobs/alice/{job.id}/final/{job.id}_{part}.safetensors" for part in PARTS]
    files = [Artifact(kind=ArtifactKind.FINAL, step=100, key=key, size=1000 + i, sha256="ab" * 32) for i, key in enumerate(keys)]
    job = table.transition(job, JobStatus.SUCCEEDED, result=lora_result(files, steps=100, final_loss=0.09),
                           progress=Progress(step=100, total_steps=100, percent=100.0), cost=Cost(actual_usd=0.04, billed_seconds=210.0))

    # When the running -> succeeded stream record reaches the notify function and the webhook is delivered
    record = status_change(stream_records(notify_stack.table), job.id, "running", "succeeded")
    assert notify_app.lambda_handler({"Records": [record]}, lambda_context) == {"batchItemFailures": []}
    queued = moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])
    assert webhook_app.lambda_handler(sqs_event([queued[0][0]]), lambda_context) == {"batchItemFailures": []}

    # Then the email lists both files with their experts
    (_, body, _, _, _), = sns_sent(notify_stack.topic_arn)
    assert all(f"s3://{notify_stack.bucket}/{key} ({part}," in body for key, part in zip(keys, PARTS, strict=True))
    # And the EventBridge detail lists both (lora_key stays the first)
    detail = event_capture()[0]["detail"]["result"]
    assert [(f["key"], f["part"]) for f in detail["lora_files"]] == list(zip(keys, PARTS, strict=True))
    assert detail["lora_key"] == keys[0]
    # And the signed webhook's job view lists both
    request = receiver.requests[0]
    payload = Webhook(owner_webhook_secret(signing_key(), "alice")).verify(request.body, request.headers)
    assert [(f["key"], f["part"]) for f in payload["data"]["result"]["files"]] == list(zip(keys, PARTS, strict=True))
