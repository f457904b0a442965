"""Reconcile through the real scheduled handler: every message that never arrived."""

from __future__ import annotations

from datetime import timedelta

import pytest

from loraforge.dal.clients import client
from loraforge.dal.jobs_table import GLOBAL_CAPACITY, owner_capacity_pk
from loraforge.models import Artifact, JobStatus, utcnow
from tests.integration.dispatch.helpers import ControlPlane


def make_silent(plane: ControlPlane, job_id: str, *, minutes: int) -> None:
    """The run was dispatched and started before its last event, `minutes` ago."""
    then = utcnow() - timedelta(minutes=minutes)
    plane.set_fields(job_id, dispatched_at=then - timedelta(seconds=30), attempt_started_at=then - timedelta(seconds=20), last_event_at=then)


def test_webhook_that_never_arrives_is_applied_by_reconcile(plane: ControlPlane) -> None:
    # Given a run that completed on RunPod, and its webhook was lost
    job = plane.running_job()
    plane.finish_on_runpod(job.id, execution_ms=30_000, delay_ms=0)

    # When reconcile runs
    report = plane.reconcile()

    # Then the job succeeded with its result and cost, exactly as the webhook would have done
    stored = plane.job(job.id)
    assert stored.status == JobStatus.SUCCEEDED and stored.result is not None and stored.result.lora is not None
    assert stored.cost.billed_seconds == pytest.approx(30.0)
    assert report["finished"] == 1
    # and a second run changes nothing
    again = plane.reconcile()
    assert again["finished"] == 0 and plane.job(job.id).version == stored.version


def test_run_runpod_has_forgotten_fails_the_job_or_retries_it(plane: ControlPlane, configure) -> None:
    # Given no automatic retries, and a run RunPod no longer knows (past its 30-minute retention)
    configure(MAX_AUTO_RETRIES="0")
    job = plane.running_job()
    plane.set_fields(job.id, dispatched_at=utcnow() - timedelta(hours=2))
    plane.runpod.forget(job.runpod_job_id or "")

    # When reconcile runs
    plane.reconcile()

    # Then the job failed with a system error that says what happened
    stored = plane.job(job.id)
    assert stored.status == JobStatus.FAILED and stored.error is not None
    assert stored.error.code == "RUNPOD_JOB_LOST" and stored.error.kind == "system"


def test_forgotten_run_whose_worker_uploaded_the_final_lora_succeeds(plane: ControlPlane) -> None:
    # Given a run whose final file was recorded (the worker's completed event got that far before the function died),
    # no end was ever applied, and RunPod has forgotten the run
    job = plane.running_job()
    final = plane.result(job)["final"]
    plane.table.put_artifact(job.id, Artifact.model_validate(final))
    plane.set_fields(job.id, dispatched_at=utcnow() - timedelta(hours=2))
    plane.runpod.forget(job.runpod_job_id or "")

    # When reconcile runs
    plane.reconcile()

    # Then the job succeeded with that file
    stored = plane.job(job.id)
    assert stored.status == JobStatus.SUCCEEDED and stored.result is not None and stored.result.lora is not None
    assert stored.result.lora.key == final["key"]


def test_silent_worker_is_stopped_and_its_job_retried(plane: ControlPlane, configure) -> None:
    # Given one automatic retry, and a worker that has sent nothing for longer than the silence limit
    configure(MAX_AUTO_RETRIES="1", WORKER_SILENCE_SECONDS="60")
    job = plane.running_job()
    silent_run = job.runpod_job_id or ""
    make_silent(plane, job.id, minutes=5)

    # When reconcile runs
    plane.reconcile()

    # Then the silent run is cancelled on RunPod and the job runs again as attempt 2
    assert [c.path for c in plane.runpod.calls_to("cancel")] == [f"/ep-cpu/cancel/{silent_run}"]
    stored = plane.job(job.id)
    assert stored.attempts == 2 and stored.status == JobStatus.STARTING and stored.runpod_job_id != silent_run


def test_leaked_capacity_slot_is_released(plane: ControlPlane) -> None:
    # Given a finished job whose id is still in both semaphores (a leak), and a queued job that cannot start
    done = plane.running_job()
    plane.runpod_webhook(done.id, plane.finish_on_runpod(done.id))
    ddb = client("dynamodb")
    for pk in (GLOBAL_CAPACITY, owner_capacity_pk(done.owner)):
        ddb.update_item(TableName=plane.table.name, Key={"pk": {"S": pk}, "sk": {"S": "META"}},
                        UpdateExpression="ADD holders :j", ExpressionAttributeValues={":j": {"SS": [done.id]}})
    active = plane.running_job()

    # When reconcile runs
    report = plane.reconcile()

    # Then only the leaked slot is released
    assert report["leaked_slots_released"] == 1
    assert plane.table.capacity_holders() == {active.id}
    assert plane.table.capacity_holders(done.owner) == {active.id}


def test_cancel_runpod_did_not_act_on_is_sent_again(plane: ControlPlane) -> None:
    # Given a job cancelling for a while, its run still IN_PROGRESS (the first /cancel was lost)
    from loraforge.logic.cancel_job import cancel_job
    from tests.support.fake_runpod import Reply

    job = plane.running_job()
    plane.runpod.script("cancel", *[Reply(500)] * 4)
    cancel_job(job.owner, job.id, keep_latest=False)
    plane.set_fields(job.id, updated_at=utcnow() - timedelta(minutes=10))

    # When reconcile runs
    plane.reconcile()

    # Then RunPod is asked again, and the job ends cancelled at the next reconcile
    assert plane.runpod.jobs[job.runpod_job_id or ""].status == "CANCELLED"
    plane.reconcile()
    assert plane.job(job.id).status == JobStatus.CANCELLED


def test_retry_of_a_silent_run_is_not_judged_by_the_old_runs_silence(plane: ControlPlane, configure) -> None:
    # Given a silent worker whose job reconcile stopped and retried, and the retry's run has just been taken by a
    # RunPod worker that is still loading (it has not sent its first event yet)
    configure(MAX_AUTO_RETRIES="2", WORKER_SILENCE_SECONDS="60")
    job = plane.running_job()
    make_silent(plane, job.id, minutes=5)
    plane.reconcile()
    retry_run = plane.runpod_id(job.id)
    plane.runpod.start_job(retry_run)

    # When reconcile runs again a moment later
    plane.reconcile()

    # Then the new run is left alone: its silence is counted from its own dispatch, not from the stopped run's last event
    stored = plane.job(job.id)
    assert stored.attempts == 2 and stored.runpod_job_id == retry_run and stored.status == JobStatus.STARTING
    assert plane.runpod.jobs[retry_run].status == "IN_PROGRESS"
