"""Reconcile (schedule): the backstop for every message that never arrived (DESIGN §3, §8).

Each run, with bounded work:
1. every active job (starting, running, cancelling; oldest first, at most `max_jobs`): `GET /status`
   and apply a final state the webhook missed (same code path as the webhook); a run RunPod no
   longer knows (404: past its 30-minute retention or its ttl), or whose worker has been silent
   past WORKER_SILENCE_SECONDS, ends as a system failure (retried automatically while retries are
   left, resuming from the newest checkpoint); a claim whose /run outcome was unknown is put back
   in the queue once RunPod's ttl guarantees that run can no longer start; a cancel that RunPod has
   not acted on is sent again;
2. capacity: a slot held by a job that is not active (a leak) is released;
3. queued jobs whose next attempt is due are dispatched, oldest first, while slots are free;
4. costs still due (at most `max_costs`, oldest first): a run that ended without its billing being recorded
   (a worker event, reconcile or a cancel ended the job, and RunPod's webhook was lost or ignored) left a
   marker (`JobsTable.put_pending_cost`); RunPod keeps a finished run 30 minutes, so `GET /status` gives its
   billed time, which is added to the job's cost by the webhook's own code (`record_run_cost`, once per run),
   and the marker is deleted. A run RunPod no longer knows is given up (logged, `ReconcileCostsLost`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..dal.jobs_table import JobsTable, PendingCost
from ..models.common import utcnow
from ..models.errors import ErrorKind, JobError
from ..models.event import EventType
from ..models.job import Job
from ..models.status import JobStatus, holds_capacity, is_terminal
from ..observability import logger, metrics
from ..providers.runpod import RunPodClient, RunPodError, RunPodNotFound, get_runpod_client
from ..settings import get_settings
from .dispatch import requeue_claimed, start_next_queued, unknown_outcome_deadline
from .finish_job import Outcome, finish_job
from .job_cost import gpu_price_per_second, record_run_cost
from .run_outcome import apply_runpod_status, recorded_result

ACTIVE_STATUSES = (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING)
# RunPod may not list a run in /status for a moment after /run answered: a 404 younger than this is not "lost".
NOT_FOUND_GRACE_SECONDS = 120
# A cancel RunPod has not acted on after this long is sent again (at most once per reconcile run).
CANCEL_RESEND_SECONDS = 120
# Worst case of one step (a RunPod call with its retries, or one dispatch) with room to record it.
MIN_SECONDS_PER_STEP = 30.0
# A cost marker whose run has not ended on RunPod after this long is dropped (RunPod's executionTimeout ends any run
# well before; the item's TTL is the same backstop).
MAX_PENDING_COST_AGE = timedelta(hours=24)


@dataclass
class ReconcileReport:
    checked: int = 0
    finished: int = 0
    requeued: int = 0
    silent: int = 0
    lost: int = 0
    cancels_resent: int = 0
    leaked_slots_released: int = 0
    dispatched: int = 0
    costs_recorded: int = 0
    costs_lost: int = 0
    errors: int = 0
    truncated: bool = False
    actions: list[str] = field(default_factory=list)


def reconcile(*, max_jobs: int = 100, max_dispatch: int = 20, max_costs: int = 50, table: JobsTable | None = None,
              client: RunPodClient | None = None, seconds_left: Callable[[], float] | None = None) -> ReconcileReport:
    """`seconds_left` (the Lambda's remaining time) stops the run early rather than be killed half-way through a job."""
    table = table or JobsTable()
    client = client or get_runpod_client()
    report = ReconcileReport()
    active, report.truncated = _active_jobs(table, max_jobs)
    now = utcnow()

    def out_of_time() -> bool:
        return seconds_left is not None and seconds_left() < MIN_SECONDS_PER_STEP

    for job in active:
        if out_of_time():
            report.truncated = True
            break
        report.checked += 1
        try:
            _reconcile_job(table, client, job, now, report)
        except Exception:  # noqa: BLE001 - one bad job must not stop the others; the next run tries again
            report.errors += 1
            logger.exception("reconciling a job failed", extra={"job_id": job.id})
    if not report.truncated:
        _repair_capacity(table, {j.id for j in active}, {j.owner for j in active}, report)
    while report.dispatched < max_dispatch and not out_of_time():
        results = start_next_queued(table, max_starts=1, max_candidates=max_dispatch * 3, client=client)
        if not any(r.outcome == "dispatched" for r in results):
            break
        report.dispatched += 1
    _settle_pending_costs(table, client, now, report, max_costs, out_of_time)
    for name, value in (("ReconcileFinished", report.finished), ("ReconcileLeakedSlots", report.leaked_slots_released),
                        ("ReconcileDispatched", report.dispatched), ("ReconcileCostsRecorded", report.costs_recorded),
                        ("ReconcileCostsLost", report.costs_lost), ("ReconcileErrors", report.errors)):
        if value:
            metrics.add_metric(name=name, unit="Count", value=value)
    logger.info("reconcile done", extra={"report": report.__dict__})
    return report


def _active_jobs(table: JobsTable, budget: int) -> tuple[list[Job], bool]:
    jobs: list[Job] = []
    for status in ACTIVE_STATUSES:
        cursor: str | None = None
        while True:
            if len(jobs) >= budget:
                return jobs, True
            page = table.list_jobs_by_status(status, limit=min(100, budget - len(jobs)), cursor=cursor)
            jobs.extend(page.items)
            cursor = page.next_cursor
            if not cursor:
                break
    return jobs, False


def _reconcile_job(table: JobsTable, client: RunPodClient, indexed: Job, now: datetime, report: ReconcileReport) -> None:
    job = table.get_job(indexed.id)  # the index is eventually consistent
    if job is None or is_terminal(job.status) or job.status == JobStatus.QUEUED:
        return
    if job.runpod_job_id is None or job.endpoint_id is None:
        _reconcile_unrecorded_run(table, job, now, report)
        return
    try:
        run = client.status(job.endpoint_id, job.runpod_job_id)
    except RunPodNotFound:
        if job.dispatched_at and now - job.dispatched_at < timedelta(seconds=NOT_FOUND_GRACE_SECONDS):
            return
        report.lost += 1
        _finish(table, job, _lost_run_outcome(table, job), report, f"{job.id}: RunPod no longer knows run {job.runpod_job_id}")
        return
    except RunPodError as exc:
        report.errors += 1
        logger.warning("RunPod /status failed during reconcile", extra={"job_id": job.id, "cause": str(exc)})
        return
    if run.is_terminal:
        if apply_runpod_status(table, job, run, source="reconcile"):
            report.finished += 1
            report.actions.append(f"{job.id}: applied missed {run.status}")
        return
    if job.status == JobStatus.CANCELLING and now - job.updated_at > timedelta(seconds=CANCEL_RESEND_SECONDS):
        try:
            client.cancel(job.endpoint_id, job.runpod_job_id)
            report.cancels_resent += 1
            table.append_event(job.id, EventType.CANCEL_REQUESTED, {"runpod_job_id": job.runpod_job_id, "runpod_cancel": "re-sent by reconcile"})
        except RunPodError as exc:
            logger.warning("re-sending /cancel failed", extra={"job_id": job.id, "cause": str(exc)})
        return
    # The latest of them: last_event_at and started_at survive an automatic retry, so alone they would judge the new run
    # by the old run's silence; dispatched_at is this attempt's claim.
    signs = [t for t in (job.last_event_at, job.attempt_started_at, job.dispatched_at) if t is not None]
    last_sign_of_life = max(signs) if signs else (job.started_at or job.updated_at)
    silence = (now - last_sign_of_life).total_seconds()
    if run.status != "IN_QUEUE" and silence > get_settings().worker_silence_seconds:
        # Stop the run first: a worker that is only mute must not keep training (and billing) next to its retry.
        try:
            client.cancel(job.endpoint_id, job.runpod_job_id)
        except RunPodError as exc:
            logger.warning("could not cancel a silent run", extra={"job_id": job.id, "cause": str(exc)})
        report.silent += 1
        _finish(table, job, Outcome(status="failed", source="reconcile", runpod_job_id=job.runpod_job_id, error=JobError(
            code="WORKER_SILENT", kind=ErrorKind.SYSTEM,
            message=f"the worker sent nothing for {int(silence)} s (limit {get_settings().worker_silence_seconds} s)")),
            report, f"{job.id}: worker silent for {int(silence)} s")


def _reconcile_unrecorded_run(table: JobsTable, job: Job, now: datetime, report: ReconcileReport) -> None:
    """A claimed job without a RunPod id: its /run is in flight, or its outcome was unknown."""
    if job.status == JobStatus.CANCELLING:
        _finish(table, job, Outcome(status="cancelled", source="reconcile"), report, f"{job.id}: cancelled (no RunPod run)")
        return
    deadline = unknown_outcome_deadline(job)
    if deadline is not None and now < deadline:
        return  # a /run of this claim may still start; its worker's `started` event would name it
    requeue_claimed(table, job, "no worker reported for this dispatch before RunPod's ttl ran out", delay_seconds=0)
    report.requeued += 1
    report.actions.append(f"{job.id}: requeued after an unknown /run outcome")


def _lost_run_outcome(table: JobsTable, job: Job) -> Outcome:
    """RunPod forgot the run (404). If the worker's own events recorded the final LoRA, the run succeeded."""
    result = recorded_result(table, job)
    if result is not None:
        return Outcome(status="succeeded", source="reconcile", runpod_job_id=job.runpod_job_id, result=result)
    return Outcome(status="failed", source="reconcile", runpod_job_id=job.runpod_job_id, error=JobError(
        code="RUNPOD_JOB_LOST", kind=ErrorKind.SYSTEM,
        message="RunPod no longer knows this run (results are kept 30 minutes, and nothing after the ttl) and no result arrived"))


def _finish(table: JobsTable, job: Job, outcome: Outcome, report: ReconcileReport, action: str) -> None:
    if finish_job(table, job, outcome):
        report.finished += 1
        report.actions.append(action)


def _settle_pending_costs(table: JobsTable, client: RunPodClient, now: datetime, report: ReconcileReport, budget: int,
                          out_of_time: Callable[[], bool]) -> None:
    """At most `budget` markers, oldest first: 1 Query per page of markers, then per marker 1 GetItem, at most one
    RunPod `GET /status`, 1 UpdateItem when a cost is added and 1 DeleteItem when it is settled."""
    cursor: str | None = None
    seen = 0
    while seen < budget and not out_of_time():
        page = table.list_pending_costs(limit=budget - seen, cursor=cursor)
        for pending in page.items:
            if out_of_time():
                report.truncated = True
                return
            seen += 1
            try:
                _settle_pending_cost(table, client, pending, now, report)
            except Exception:  # noqa: BLE001 - one bad marker must not stop the others; the next run tries again
                report.errors += 1
                logger.exception("settling a run's cost failed", extra={"job_id": pending.job_id, "runpod_job_id": pending.runpod_job_id})
        cursor = page.next_cursor
        if not cursor or not page.items:
            return


def _settle_pending_cost(table: JobsTable, client: RunPodClient, pending: PendingCost, now: datetime, report: ReconcileReport) -> None:
    job = table.get_job(pending.job_id)
    if job is None or pending.runpod_job_id in job.billed_runs:
        table.delete_pending_cost(pending.job_id, pending.runpod_job_id)  # RunPod's webhook recorded it after all
        return
    age = now - pending.created_at
    try:
        run = client.status(pending.endpoint_id, pending.runpod_job_id)
    except RunPodNotFound:
        if age < timedelta(seconds=NOT_FOUND_GRACE_SECONDS):
            return
        _give_up_cost(table, pending, report, "RunPod no longer knows the run (past its 30-minute retention)")
        return
    except RunPodError as exc:
        report.errors += 1
        logger.warning("RunPod /status failed while settling a cost", extra={"job_id": job.id, "cause": str(exc)})
        return
    if not run.is_terminal:
        if age > MAX_PENDING_COST_AGE:
            _give_up_cost(table, pending, report, f"the run is still {run.status} a day after the job ended")
        return  # still uploading or stopping: RunPod bills it when it ends
    if record_run_cost(table, job, run):
        report.costs_recorded += 1
        report.actions.append(f"{job.id}: recorded the cost of run {run.id}")
    elif run.billed_seconds is not None and gpu_price_per_second(job) is not None:
        fresh = table.get_job(job.id)
        if fresh is not None and run.id not in fresh.billed_runs:
            return  # another cost write raced this one: the next run adds it
    table.delete_pending_cost(pending.job_id, pending.runpod_job_id)


def _give_up_cost(table: JobsTable, pending: PendingCost, report: ReconcileReport, reason: str) -> None:
    report.costs_lost += 1
    logger.warning("the cost of a finished run could not be recorded", extra={"job_id": pending.job_id, "runpod_job_id": pending.runpod_job_id,
                                                                              "reason": reason})
    table.delete_pending_cost(pending.job_id, pending.runpod_job_id)


def _repair_capacity(table: JobsTable, active_ids: set[str], owners: set[str], report: ReconcileReport) -> None:
    """Release slots held by jobs that are not active. Both semaphores change in one transaction with the status,
    so a leak shows in the global one; the owner's is repaired with it."""
    leaked_owners: dict[str, str] = {}
    for job_id in table.capacity_holders() - active_ids:
        holder = table.get_job(job_id)
        if holder is not None and not holds_capacity(holder.status):
            leaked_owners[job_id] = holder.owner
    for owner in owners | set(leaked_owners.values()):
        for job_id in table.capacity_holders(owner) - active_ids:
            if job_id in leaked_owners:
                continue
            holder = table.get_job(job_id)
            if holder is not None and not holds_capacity(holder.status):
                leaked_owners[job_id] = holder.owner
    for job_id, owner in leaked_owners.items():
        table.release_leaked_slot(job_id, owner)
        report.leaked_slots_released += 1
        report.actions.append(f"{job_id}: released a leaked capacity slot")
        logger.warning("released a leaked capacity slot", extra={"job_id": job_id, "owner": owner})
