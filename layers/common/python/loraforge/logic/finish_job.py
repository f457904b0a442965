"""Apply the end of a run: THE code path shared by the RunPod webhook, worker events, reconcile and cancel.

Whichever of them comes first wins through `JobsTable.transition` (conditional on status and
version); the others re-read, see a terminal state or another run, and stop. A system failure
with automatic retries left is not terminal: the job goes back to `queued` as a new attempt that
resumes from its newest checkpoint. Every path that frees a capacity slot starts the oldest
queued job at once (reconcile is only the backstop).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from ..dal.jobs_table import JobsTable
from ..models.common import utcnow
from ..models.errors import ErrorKind, InvalidTransition, JobError
from ..models.event import EventType
from ..models.job import Job, JobResult, Progress
from ..models.status import JobStatus, holds_capacity, is_terminal
from ..observability import logger, metrics
from ..settings import get_settings
from .checkpoints import newest_checkpoint
from .lora_result import lora_result

MAX_RACE_RETRIES = 4
OutcomeSource = Literal["runpod_webhook", "worker_event", "reconcile", "cancel", "dispatch"]


class Outcome(BaseModel):
    """How a run ended, from whichever source saw it first."""

    status: Literal["succeeded", "failed", "cancelled"]
    source: OutcomeSource
    runpod_job_id: str | None = None
    error: JobError | None = None
    result: JobResult | None = None
    retryable: bool = True
    """False for failures an automatic retry cannot fix even when kind is system (e.g. cancelled on RunPod's console)."""
    ended_at: datetime | None = None
    """When the run ended, where its source knows (the worker's terminal event); None: when the outcome is applied."""


def _auto_retry_allowed(job: Job, outcome: Outcome) -> bool:
    return (
        outcome.status == "failed"
        and outcome.retryable
        and outcome.error is not None
        and outcome.error.kind == ErrorKind.SYSTEM
        and not job.cancel_requested
        and job.status in (JobStatus.STARTING, JobStatus.RUNNING)
        and job.auto_retries < get_settings().max_auto_retries
    )


def _plan(table: JobsTable, job: Job, outcome: Outcome) -> tuple[JobStatus, dict[str, Any], EventType, dict[str, Any]]:
    """Target status, field changes and the event to record, for `outcome` applied to `job`."""
    event_data: dict[str, Any] = {"source": outcome.source, "runpod_job_id": outcome.runpod_job_id or job.runpod_job_id}
    if _auto_retry_allowed(job, outcome):
        stored = newest_checkpoint(table, job)
        resume_step = stored.checkpoint.step if stored else 0
        changes = {
            "attempts": job.attempts + 1, "auto_retries": job.auto_retries + 1,
            "resume_from": stored.checkpoint if stored else None, "resume_optimizer": stored.optimizer if stored else None,
            "resume_files": list(stored.files) if stored else [],
            "runpod_job_id": None, "endpoint_id": None, "dispatch_token": None, "dispatched_at": None,
            "next_attempt_at": None, "dispatch_attempts": 0, "worker_seq": 0,
            "progress": Progress(step=resume_step, total_steps=job.progress.total_steps,
                                 percent=round(100.0 * resume_step / job.progress.total_steps, 1) if job.progress.total_steps else 0.0),
        }
        assert outcome.error is not None
        event_data |= {"error": outcome.error.model_dump(mode="json"), "attempt": job.attempts + 1, "resume_step": resume_step}
        return JobStatus.QUEUED, changes, EventType.RETRY_SCHEDULED, event_data
    if job.status == JobStatus.CANCELLING and outcome.status != "succeeded":
        # The user asked to stop: however the run ended (cancelled, killed, failed on the way down), it is cancelled.
        # A run that succeeded before the cancel reached it keeps its LoRA (first terminal state wins).
        changes: dict[str, Any] = {}
        if job.keep_latest:
            stored = newest_checkpoint(table, job)
            if stored:
                changes["result"] = lora_result(stored.files, steps=stored.step)  # every file of the step (Wan 2.2 14B: both experts)
                event_data["kept_checkpoint_step"] = stored.checkpoint.step
        return JobStatus.CANCELLED, changes, EventType.CANCELLED, event_data
    if outcome.status == "succeeded":
        changes = {"result": outcome.result}
        if outcome.result and outcome.result.steps:
            total = job.progress.total_steps or outcome.result.steps
            changes["progress"] = job.progress.model_copy(update={"step": outcome.result.steps, "total_steps": total,
                                                                  "percent": 100.0, "eta_seconds": 0.0,
                                                                  "loss": outcome.result.final_loss or job.progress.loss})
        return JobStatus.SUCCEEDED, changes, EventType.COMPLETED, event_data
    error = outcome.error
    if outcome.status == "cancelled":
        # Stopped on RunPod without our asking (console, endpoint purge): not something a retry should undo.
        error = error or JobError(code="RUNPOD_CANCELLED", message="the run was cancelled on RunPod outside loraforge",
                                  kind=ErrorKind.SYSTEM)
    error = error or JobError(code="WORKER_FAILED", message="the worker failed without a reason", kind=ErrorKind.SYSTEM)
    event_data["error"] = error.model_dump(mode="json")
    return JobStatus.FAILED, {"error": error}, EventType.FAILED, event_data


def finish_job(table: JobsTable, job: Job, outcome: Outcome, *, start_next: bool = True) -> Job | None:
    """Apply `outcome` to `job`. Returns the job after the change, or None when there was nothing to do

    (already terminal, requeued by someone else, or the outcome belongs to another RunPod run).
    """
    for _ in range(MAX_RACE_RETRIES):
        if is_terminal(job.status) or job.status == JobStatus.QUEUED:
            return None
        if outcome.runpod_job_id and job.runpod_job_id and outcome.runpod_job_id != job.runpod_job_id:
            logger.info("outcome of another run ignored", extra={"job_id": job.id, "runpod_job_id": outcome.runpod_job_id})
            return None
        target, changes, event_type, event_data = _plan(table, job, outcome)
        changes |= _close_attempt(job, target, outcome)
        _remember_unbilled_run(table, job)
        try:
            updated = table.transition(job, target, **changes)
        except InvalidTransition:
            fresh = table.get_job(job.id)
            if fresh is None:
                return None
            job = fresh
            continue
        table.append_event(job.id, event_type, event_data)
        metrics.add_metric(name=f"Jobs{target.value.capitalize()}", unit="Count", value=1)
        logger.info("job run ended", extra={"job_id": job.id, "from": str(job.status), "to": str(target), "source": outcome.source})
        if start_next and holds_capacity(job.status):
            _start_next(table)
        return updated
    logger.warning("gave up applying an outcome after repeated races", extra={"job_id": job.id})
    return None


def _close_attempt(job: Job, target: JobStatus, outcome: Outcome) -> dict[str, Any]:
    """The ending attempt's measured run time (its worker's start to the end of its run) added to `run_seconds`: RunPod bills
    every attempt's run, so the job's run time is their sum, never the first start to the last end (queue waits between).
    A requeued attempt's start is cleared so the next attempt can never be measured from it."""
    changes: dict[str, Any] = {"attempt_started_at": None} if target == JobStatus.QUEUED else {}
    # An attempt running when attempt_started_at was introduced has only started_at, which is its start while no retry happened.
    start = job.attempt_started_at or (job.started_at if job.auto_retries == 0 else None)
    if start is not None:
        seconds = max(0.0, ((outcome.ended_at or utcnow()) - start).total_seconds())
        changes["run_seconds"] = round((job.run_seconds or 0.0) + seconds, 3)
    return changes


def _remember_unbilled_run(table: JobsTable, job: Job) -> None:
    """The run ends here without its billing recorded (a worker event, reconcile or a cancel ended it, not RunPod's status):
    leave a marker so reconcile asks RunPod for the billed time even if RunPod's webhook never arrives, and also for a
    run the job leaves behind on an automatic retry (the webhook of a run that is no longer the job's is ignored).

    Written before the transition: a crash in between leaves a marker reconcile settles, never a run nobody bills.
    """
    if job.runpod_job_id and job.endpoint_id and job.runpod_job_id not in job.billed_runs:
        table.put_pending_cost(job.id, job.runpod_job_id, job.endpoint_id)


def _start_next(table: JobsTable) -> None:
    """A slot just freed: start the oldest due queued job now. Best effort: reconcile drains the queue anyway."""
    from ..providers.runpod import get_runpod_client
    from .dispatch import start_next_queued  # dispatch imports this module for its own failures

    try:
        start_next_queued(table, client=get_runpod_client(quick=True))
    except Exception:  # noqa: BLE001 - the run's end is applied; a failed hand-over must not undo or hide that
        logger.exception("starting the next queued job failed; reconcile will")
