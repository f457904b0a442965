"""The cost of a run whose end did not come from RunPod's status (a worker event, reconcile, a cancel): reconcile
asks RunPod for the billed time even when RunPod's webhook is lost, with bounded work and no Scan."""

from __future__ import annotations

import pytest

from loraforge.logic import reconcile as reconcile_logic
from loraforge.models import Job, JobStatus
from tests.integration.dispatch.helpers import ControlPlane, price


def finished_by_the_worker(plane: ControlPlane) -> Job:
    """A job that succeeded on the worker's `completed` event (it arrives before RunPod's webhook)."""
    job = plane.running_job()
    answer = plane.worker_event(job.id, "completed", 5, plane.result(job), runpod_job_id=job.runpod_job_id)
    assert answer.status == 200 and plane.job(job.id).status == JobStatus.SUCCEEDED
    return plane.job(job.id)


def status_calls(plane: ControlPlane, run_id: str) -> int:
    return len(plane.runpod.calls_to("status", run_id))


def test_cost_of_a_run_ended_by_the_worker_is_recorded_when_the_webhook_is_lost(plane: ControlPlane) -> None:
    # Given a job the worker's completed event ended, whose run then completed on RunPod, and RunPod's webhook was lost
    job = finished_by_the_worker(plane)
    run_id = job.runpod_job_id or ""
    assert job.cost.actual_usd is None
    plane.runpod.complete(run_id, plane.result(job), execution_ms=20_000, delay_ms=500)

    # When reconcile runs
    report = plane.reconcile()

    # Then the job's cost is the run's billed seconds × the class price, recorded once
    stored = plane.job(job.id)
    assert stored.cost.billed_seconds == pytest.approx(20.5)
    assert stored.cost.actual_usd == pytest.approx(20.5 * price("cpu"))
    assert stored.billed_runs == [run_id] and report["costs_recorded"] == 1
    assert stored.status == JobStatus.SUCCEEDED and stored.version == job.version  # only the cost changed
    # and nothing is left to settle: the next run asks RunPod nothing more and changes nothing
    assert plane.table.list_pending_costs().items == []
    calls = status_calls(plane, run_id)
    again = plane.reconcile()
    assert again["costs_recorded"] == 0 and status_calls(plane, run_id) == calls
    assert plane.job(job.id).cost == stored.cost


def test_a_run_still_finishing_on_runpod_is_billed_once_it_ends(plane: ControlPlane) -> None:
    # Given a job the worker ended while its RunPod run is still IN_PROGRESS (the handler is returning)
    job = finished_by_the_worker(plane)
    run_id = job.runpod_job_id or ""

    # When reconcile runs before RunPod has ended the run
    first = plane.reconcile()

    # Then nothing is billed yet and the run is still due
    assert first["costs_recorded"] == 0 and plane.job(job.id).cost.actual_usd is None
    assert [p.runpod_job_id for p in plane.table.list_pending_costs().items] == [run_id]

    # When RunPod ends it and reconcile runs again
    plane.runpod.complete(run_id, plane.result(job), execution_ms=12_000, delay_ms=0)
    plane.reconcile()

    # Then the cost is recorded
    assert plane.job(job.id).cost.billed_seconds == pytest.approx(12.0)
    assert plane.table.list_pending_costs().items == []


def test_a_webhook_that_arrives_after_all_settles_the_run_without_asking_runpod_again(plane: ControlPlane) -> None:
    # Given a job the worker ended, and RunPod's webhook arriving later with the run's billing
    job = finished_by_the_worker(plane)
    run_id = job.runpod_job_id or ""
    assert plane.runpod_webhook(job.id, plane.finish_on_runpod(job.id, execution_ms=10_000, delay_ms=0)).status == 200
    calls = status_calls(plane, run_id)

    # When reconcile runs
    report = plane.reconcile()

    # Then the cost is the webhook's (not added twice) and RunPod is not asked again
    stored = plane.job(job.id)
    assert stored.cost.billed_seconds == pytest.approx(10.0) and stored.billed_runs == [run_id]
    assert report["costs_recorded"] == 0 and status_calls(plane, run_id) == calls
    assert plane.table.list_pending_costs().items == []


def test_the_run_an_automatic_retry_leaves_behind_is_billed_too(plane: ControlPlane, configure) -> None:
    # Given one automatic retry, and a run that failed with a system error reported by its worker
    configure(MAX_AUTO_RETRIES="1")
    job = plane.running_job()
    first_run = job.runpod_job_id or ""
    failed = plane.result(job, status="failed", error={"code": "ENGINE_CRASHED", "message": "exit 1", "kind": "system"})
    assert plane.worker_event(job.id, "failed", 5, failed, runpod_job_id=first_run).status == 200
    retried = plane.job(job.id)
    assert retried.attempts == 2 and retried.runpod_job_id != first_run
    # RunPod ends the first run; its webhook is ignored (the run is no longer the job's) or lost
    plane.runpod.fail(first_run, "ENGINE_CRASHED: exit 1", execution_ms=40_000, delay_ms=1_000)
    assert plane.runpod_webhook(job.id, plane.runpod.webhook_body(first_run)).body["status"] == "ignored"

    # When reconcile runs
    plane.reconcile()

    # Then the first run's time is in the job's cost
    stored = plane.job(job.id)
    assert first_run in stored.billed_runs and stored.cost.billed_seconds == pytest.approx(41.0)


def test_a_run_runpod_has_forgotten_is_given_up_after_the_grace_period(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a job the worker ended, whose run RunPod no longer knows (past its retention), after the not-found grace period
    monkeypatch.setattr(reconcile_logic, "NOT_FOUND_GRACE_SECONDS", 0)
    job = finished_by_the_worker(plane)
    plane.runpod.forget(job.runpod_job_id or "")

    # When reconcile runs
    report = plane.reconcile()

    # Then the marker is dropped (counted as lost), and the job is otherwise untouched
    assert report["costs_lost"] == 1 and plane.table.list_pending_costs().items == []
    stored = plane.job(job.id)
    assert stored.cost.actual_usd is None and stored.status == JobStatus.SUCCEEDED


def test_reconcile_settles_at_most_its_budget_of_costs_per_run(plane: ControlPlane) -> None:
    # Given three jobs ended by their workers whose runs completed on RunPod, webhooks lost
    jobs = [finished_by_the_worker(plane) for _ in range(3)]
    for job in jobs:
        plane.runpod.complete(job.runpod_job_id or "", plane.result(job), execution_ms=1_000, delay_ms=0)

    # When reconcile runs with a budget of two
    report = reconcile_logic.reconcile(max_costs=2)

    # Then the two oldest are billed, and the third waits for the next run
    assert report.costs_recorded == 2
    assert [plane.job(j.id).cost.actual_usd is not None for j in jobs] == [True, True, False]
    assert reconcile_logic.reconcile(max_costs=2).costs_recorded == 1
