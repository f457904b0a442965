"""The cost a terminal notification states, through the real hooks, the real stream and the real notify function
(moto server + the fake RunPod): RunPod's completion webhook first -> the billed cost; the worker's completed event
first -> the measured run time, and RunPod's later figure reaches GET /v1/jobs/{id} without a second notification."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest

from functions.notify import app as notify_app
from loraforge.models import JobStatus, utcnow
from loraforge.models.job import Job, NotifyOptions
from tests.integration.dispatch.conftest import fake_runpod_server, plane, runpod  # noqa: F401 - the control plane's fixtures
from tests.integration.dispatch.helpers import ControlPlane, price
from tests.integration.notify.helpers import moto_queue_messages, sns_sent, status_change, stream_records

NOTIFY = NotifyOptions(email="alice@example.com", webhook_url="https://hooks.example.com/loraforge")


def running_job(plane: ControlPlane, started_minutes_ago: float = 0.0) -> Job:  # noqa: F811 - plane is a fixture
    """A dispatched job whose worker sent its `started` event `started_minutes_ago` minutes ago."""
    job = plane.seed_job("alice", notify=NOTIFY)
    plane.dispatch(job.id)
    job = plane.job(job.id)
    run_id = plane.runpod_id(job.id)
    plane.runpod.start_job(run_id)
    started = plane.worker_event(job.id, "started", 1, {"dispatch_token": job.dispatch_token, "runpod_job_id": run_id},
                                 runpod_job_id=run_id, at=utcnow() - timedelta(minutes=started_minutes_ago))
    assert started.status == 200
    return plane.job(job.id)


def notify(records: list[dict], context) -> None:
    assert notify_app.lambda_handler({"Records": records}, context) == {"batchItemFailures": []}


def job_meta_records(table: str, job_id: str, skip: set[str]) -> list[dict]:
    return [r for r in stream_records(table) if r["eventID"] not in skip
            and r["dynamodb"]["Keys"]["pk"]["S"] == f"JOB#{job_id}" and r["dynamodb"]["Keys"]["sk"]["S"] == "META"]


def webhook_payloads(notify_stack) -> list[dict]:
    return [json.loads(body["payload"]) for body, _ in moto_queue_messages(notify_stack.queues["WebhookDeliveryQueue"])]


def test_when_runpods_webhook_comes_first_every_channel_states_the_billed_cost(
        plane: ControlPlane, notify_stack, event_capture, lambda_context) -> None:  # noqa: F811
    # Given a running job whose RunPod run completes, and RunPod's webhook arrives before the worker's completed event
    job = running_job(plane)
    body = plane.finish_on_runpod(job.id, execution_ms=1_200_000, delay_ms=30_000)
    assert plane.runpod_webhook(job.id, body).status == 200
    assert plane.job(job.id).status == JobStatus.SUCCEEDED
    # When the running -> succeeded stream record reaches the notify function
    notify([status_change(stream_records(notify_stack.table), job.id, "running", "succeeded")], lambda_context)

    # Then the email states RunPod's billed cost and billed seconds (1230 s: execution + delay)
    [(_, email, _, _, _)] = sns_sent(notify_stack.topic_arn)
    usd = 1230 * price("cpu")
    assert f"Cost        ${usd:.2f}, billed by RunPod for 1230 s (20m 30s) of GPU time at ${price('cpu'):g}/s" in email
    assert "measured" not in email
    # and the EventBridge event and the webhook carry the same cost, actual_usd set
    [event] = event_capture()
    [webhook] = webhook_payloads(notify_stack)
    assert event["detail"]["cost"] == webhook["data"]["cost"]
    cost = event["detail"]["cost"]
    assert cost["billing"] == "billed" and cost["actual_usd"] == pytest.approx(usd) and cost["billed_seconds"] == pytest.approx(1230)
    assert cost["estimated_usd"] == job.cost.estimated_usd is not None and cost["measured_usd"] is None


def test_when_the_worker_ends_the_job_first_the_email_gives_the_measured_cost_and_the_billed_one_arrives_quietly(
        plane: ControlPlane, notify_stack, event_capture, lambda_context) -> None:  # noqa: F811
    # Given a job whose worker started 20 minutes ago and whose completed event ends it before RunPod's webhook
    job = running_job(plane, started_minutes_ago=20)
    run_id = plane.runpod_id(job.id)
    assert plane.worker_event(job.id, "completed", 5, plane.result(job), runpod_job_id=run_id).status == 200
    assert plane.job(job.id).cost.actual_usd is None
    # When the running -> succeeded record reaches the notify function
    handled = stream_records(notify_stack.table)
    notify([status_change(handled, job.id, "running", "succeeded")], lambda_context)

    # Then the email gives about the measured run time x the class price, labelled, and where the billed figure will be
    [(_, email, _, _, _)] = sns_sent(notify_stack.topic_arn)
    assert re.search(rf"Cost        about \$0\.24 for 20m 0\ds of measured run time \(the worker's start to the end of the run, "
                     rf"at \${price('cpu'):g}/s\)", email), email
    assert f"is added to GET /v1/jobs/{job.id} when RunPod reports it" in email and "not billed yet" not in email
    # and the event and the webhook say the same: actual_usd null, billing pending, the measured figure and the estimate
    [event] = event_capture()
    [webhook] = webhook_payloads(notify_stack)
    assert event["detail"]["cost"] == webhook["data"]["cost"]
    cost = event["detail"]["cost"]
    assert (cost["billing"], cost["actual_usd"], cost["billed_seconds"]) == ("pending", None, None)
    assert cost["measured_usd"] == pytest.approx(0.24, abs=0.001) and cost["measured_seconds"] == pytest.approx(1200, abs=5)
    assert cost["estimated_usd"] == job.cost.estimated_usd is not None

    # When RunPod's webhook then arrives with the billed time, and its changes reach the notify function
    body = plane.finish_on_runpod(job.id, execution_ms=1_210_000, delay_ms=30_000)
    assert plane.runpod_webhook(job.id, body).status == 200
    later = job_meta_records(notify_stack.table, job.id, {r["eventID"] for r in handled})
    assert later, "the cost write is on the stream"
    notify(later, lambda_context)

    # Then the job resource has RunPod's figure, and nobody got a second email, event or webhook
    stored = plane.job(job.id)
    assert stored.public()["cost"]["actual_usd"] == pytest.approx(1240 * price("cpu")) and stored.status == JobStatus.SUCCEEDED
    assert len(sns_sent(notify_stack.topic_arn)) == 1
    assert event_capture() == []
    assert len(webhook_payloads(notify_stack)) == 1
