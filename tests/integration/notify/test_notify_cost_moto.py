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


def crash_attempt_one(plane: ControlPlane, job: Job, minutes_ago: float) -> Job:  # noqa: F811 - plane is a fixture
    """The worker of attempt 1 reports a system failure (its own event, RunPod has billed nothing) `minutes_ago` minutes ago;
    one automatic retry is allowed, so the job goes back to the queue and the freed slot dispatches attempt 2 at once."""
    run = plane.runpod_id(job.id)
    crashed = plane.result(job, status="failed", error={"code": "ENGINE_CRASHED", "message": "CUDA error: an illegal memory access",
                                                        "kind": "system"})
    assert plane.worker_event(job.id, "failed", 5, crashed, runpod_job_id=run, at=utcnow() - timedelta(minutes=minutes_ago)).status == 200
    return plane.job(job.id)


def test_an_automatically_retried_job_states_the_run_time_of_both_attempts(
        plane: ControlPlane, notify_stack, event_capture, lambda_context) -> None:  # noqa: F811
    # Given attempt 1's worker started 50 minutes ago and reported a system failure 30 minutes ago (a 20 minute run)
    job = running_job(plane, started_minutes_ago=50)
    retried = crash_attempt_one(plane, job, minutes_ago=30)
    # Then the job is on attempt 2 with attempt 1's run time kept and its start forgotten
    assert (retried.status, retried.attempts, retried.auto_retries) == (JobStatus.STARTING, 2, 1)
    assert retried.attempt_started_at is None and retried.run_seconds == pytest.approx(1200, abs=5)

    # When attempt 2's worker starts 15 minutes ago and its completed event ends the job now, before RunPod bills either run
    run = plane.runpod_id(job.id)
    plane.runpod.start_job(run)
    assert plane.worker_event(job.id, "started", 1, {"dispatch_token": retried.dispatch_token, "runpod_job_id": run},
                              runpod_job_id=run, at=utcnow() - timedelta(minutes=15)).status == 200
    assert plane.worker_event(job.id, "completed", 5, plane.result(plane.job(job.id)), runpod_job_id=run).status == 200
    # and the running -> succeeded change reaches the notify function
    notify([status_change(stream_records(notify_stack.table), job.id, "running", "succeeded")], lambda_context)

    # Then the email prices both runs (20 + 15 minutes): not attempt 1's start to the end (50 minutes), not attempt 2 alone
    [(_, email, _, _, _)] = sns_sent(notify_stack.topic_arn)
    assert re.search(r"Cost        about \$0\.42 for 35m 0\ds of measured run time over 2 attempts \(each attempt's worker start to the end "
                     rf"of its run, at \${price('cpu'):g}/s\)", email), email
    # and its Duration row says it is the run time over both attempts, beside the time since the job was created (1 hour ago)
    assert re.search(r"Duration    run time 35m 0\ds over 2 attempts; (59m 5\ds|1h 00m 0\ds) since created", email), email
    # and the webhook and the event state the same measured figure
    [event] = event_capture()
    [webhook] = webhook_payloads(notify_stack)
    cost = event["detail"]["cost"]
    assert cost == webhook["data"]["cost"] and cost["billing"] == "pending"
    assert cost["measured_seconds"] == pytest.approx(2100, abs=10) and cost["measured_usd"] == pytest.approx(2100 * price("cpu"), abs=0.003)
    # and GET /v1/jobs/{id} shows the run time measured over both attempts, and when the last attempt's worker started
    shown = plane.job(job.id).public()
    assert shown["run_seconds"] == pytest.approx(2100, abs=10) and shown["attempt_started_at"] > shown["started_at"]


def test_an_attempt_whose_worker_never_started_adds_no_run_time_from_the_attempt_before(
        plane: ControlPlane, notify_stack, lambda_context) -> None:  # noqa: F811
    # Given attempt 1 ran 20 minutes (started 50 minutes ago, system failure 30 minutes ago) and attempt 2 was dispatched
    job = running_job(plane, started_minutes_ago=50)
    crash_attempt_one(plane, job, minutes_ago=30)
    # When attempt 2's RunPod run fails before its worker sends any event (no automatic retry left)
    run = plane.runpod_id(job.id)
    plane.runpod.fail(run, "container image pull failed")
    assert plane.runpod_webhook(job.id, plane.runpod.webhook_body(run)).status == 200
    failed = plane.job(job.id)
    assert (failed.status, failed.attempts) == (JobStatus.FAILED, 2)
    notify([status_change(stream_records(notify_stack.table), job.id, "starting", "failed")], lambda_context)

    # Then the measured run time is attempt 1's 20 minutes only: attempt 1's start never measures attempt 2
    assert failed.run_seconds == pytest.approx(1200, abs=5)
    [(_, email, _, _, _)] = sns_sent(notify_stack.topic_arn)
    assert re.search(r"Duration    run time 20m 0\ds over 2 attempts; ", email), email
