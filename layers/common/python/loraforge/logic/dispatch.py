"""Dispatch: claim a queued job and a capacity slot, then start it on RunPod exactly once (DESIGN §8).

Exactly once, step by step:
1. The claim `queued -> starting` is a conditional transaction (status + version + slot): of two
   dispatchers (a duplicated stream record, the stream racing reconcile) only one wins; the other
   sees InvalidTransition and stops. The claim stores a fresh `dispatch_token` and `dispatched_at`.
2. Only the winner calls /run, with the token inside the input. The client retries /run only when
   RunPod certainly took nothing (429, 500/502/503, connection refused).
3. A /run that may have been accepted (timeout after sending, 504) is never repeated blindly: the
   job stays `starting` without a RunPod id. If RunPod did take it, its worker's `started` event
   (or RunPod's webhook, which echoes the input) carries the token and hands us the RunPod id. Only
   after RunPod's ttl has passed since the claim (ttl covers queue and run, so the lost job can no
   longer start) does reconcile put the job back in the queue with a new token. Even then, a
   worker that starts with an old token gets 409 DUPLICATE_RUN and stops before training.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic_core import to_jsonable_python

from ..dal.jobs_table import CapacityFull, JobsTable
from ..dal.storage import Storage
from ..models.common import utcnow
from ..models.errors import ErrorKind, InvalidTransition, JobError, LoraforgeError
from ..models.event import EventType
from ..models.job import Job
from ..models.status import JobStatus, is_terminal
from ..observability import logger, metrics
from ..presets import get_preset
from ..providers.runpod import (
    RunPodAuthError,
    RunPodClient,
    RunPodError,
    RunPodOutcomeUnknown,
    RunPodUnavailable,
    get_runpod_client,
)
from ..settings import get_settings
from .finish_job import Outcome, finish_job
from .worker_input import build_worker_input, run_policy, runpod_webhook_url

MAX_REDISPATCH_DELAY_SECONDS = 15 * 60
# After RunPod's ttl a lost /run can no longer start; this much more covers clock skew and a late `started` event.
UNKNOWN_OUTCOME_GRACE_SECONDS = 120

DispatchOutcome = Literal["dispatched", "skipped", "not_due", "capacity_full", "requeued", "failed", "unknown"]


@dataclass(frozen=True)
class DispatchResult:
    job_id: str
    outcome: DispatchOutcome
    detail: str = ""
    capacity_scope: str | None = None


def new_dispatch_token() -> str:
    return secrets.token_urlsafe(18)


def is_due(job: Job, now: datetime | None = None) -> bool:
    return job.next_attempt_at is None or job.next_attempt_at <= (now or utcnow())


def unknown_outcome_deadline(job: Job) -> datetime | None:
    """When a claimed job without a RunPod id may be dispatched again (no /run of this claim can still start)."""
    if job.dispatched_at is None:
        return None
    return job.dispatched_at + timedelta(seconds=run_policy(job).ttl_seconds + UNKNOWN_OUTCOME_GRACE_SECONDS)


def redispatch_delay(dispatch_attempts: int) -> float:
    """Exponential from DISPATCH_RETRY_SECONDS, capped at 15 minutes, ±20 % jitter so a backlog spreads out."""
    base = min(MAX_REDISPATCH_DELAY_SECONDS, get_settings().dispatch_retry_seconds * 2 ** max(0, dispatch_attempts - 1))
    return base * random.uniform(0.8, 1.2)


def dispatch_job(job_id: str, *, table: JobsTable | None = None, client: RunPodClient | None = None) -> DispatchResult:
    """Entry point of the stream handler: re-read the job (the stream image may be stale), then dispatch it."""
    table = table or JobsTable()
    job = table.get_job(job_id)
    if job is None:
        return DispatchResult(job_id, "skipped", "no such job")
    return dispatch_queued(table, job, client=client)


def _gpu_class(job: Job) -> str:
    if job.gpu_class:
        return job.gpu_class
    if job.estimate:
        return job.estimate.gpu_class
    return get_preset(job.preset).gpu_class


def dispatch_queued(table: JobsTable, job: Job, *, client: RunPodClient | None = None) -> DispatchResult:
    """Claim `job` (if still queued and due) and start it. Never raises for an expected outcome."""
    if job.status != JobStatus.QUEUED:
        return DispatchResult(job.id, "skipped", f"job is {job.status}")
    if not is_due(job):
        return DispatchResult(job.id, "not_due", f"next attempt at {job.next_attempt_at}")
    settings = get_settings()
    try:
        gpu_class = _gpu_class(job)
    except LoraforgeError as exc:
        return _fail_unclaimed(table, job, JobError(code=exc.code, message=exc.message, kind=ErrorKind.USER))
    endpoint_id = settings.runpod_endpoints.get(gpu_class)
    if not endpoint_id:
        return _fail_unclaimed(table, job, JobError(
            code="NO_ENDPOINT_FOR_GPU_CLASS", kind=ErrorKind.SYSTEM,
            message=f"no RunPod endpoint is configured for GPU class '{gpu_class}' (template parameter RunPodEndpoints)"))
    token = new_dispatch_token()
    try:
        claimed = table.transition(job, JobStatus.STARTING, dispatch_token=token, dispatched_at=utcnow(), endpoint_id=endpoint_id,
                                   gpu_class=gpu_class, runpod_job_id=None, next_attempt_at=None,
                                   dispatch_attempts=job.dispatch_attempts + 1)
    except CapacityFull as exc:
        return DispatchResult(job.id, "capacity_full", f"no free slot ({exc.scope})", capacity_scope=exc.scope)
    except InvalidTransition:
        return DispatchResult(job.id, "skipped", "claimed by another dispatcher")
    return _start_claimed(table, claimed, client or get_runpod_client())


def _start_claimed(table: JobsTable, job: Job, client: RunPodClient) -> DispatchResult:
    assert job.dispatch_token and job.endpoint_id
    try:
        policy = run_policy(job)
        worker_input = build_worker_input(job, job.dispatch_token, policy, table=table, storage=Storage())
        webhook = runpod_webhook_url(job.id)
    except LoraforgeError as exc:
        # The job cannot run as asked (dataset gone, preset removed): a user-visible failure, never retried.
        return _fail_claimed(table, job, JobError(code=exc.code, message=exc.message, kind=ErrorKind.USER))
    except Exception as exc:  # noqa: BLE001 - /run was not sent: anything here is safe to try again later
        logger.exception("building the worker input failed", extra={"job_id": job.id})
        return _requeue(table, job, f"internal error before /run: {type(exc).__name__}")
    try:
        run = client.run(job.endpoint_id, worker_input.model_dump(mode="json"), webhook=webhook,
                         execution_timeout_ms=policy.execution_timeout_seconds * 1000, ttl_ms=policy.ttl_seconds * 1000)
    except RunPodOutcomeUnknown as exc:
        return _outcome_unknown(table, job, str(exc))
    except (RunPodUnavailable, RunPodAuthError) as exc:
        return _requeue(table, job, str(exc))
    except RunPodError as exc:
        # RunPod understood and refused this input (4xx): sending it again will not help.
        return _fail_claimed(table, job, JobError(code="RUNPOD_REJECTED", kind=ErrorKind.SYSTEM,
                                                  message=f"RunPod refused the job: {exc}"))
    return _record_run(table, job, run.id, client)


def _record_run(table: JobsTable, job: Job, runpod_job_id: str, client: RunPodClient) -> DispatchResult:
    """Store the RunPod id unless the job moved on while /run was in flight (then stop that run)."""
    recorded = table.update_job(
        job.id, set_fields={"runpod_job_id": runpod_job_id}, only_if_status=[JobStatus.STARTING],
        condition="dispatch_token = :tok AND (attribute_not_exists(runpod_job_id) OR attribute_type(runpod_job_id, :null) "
                  "OR runpod_job_id = :rp)",
        values={":tok": job.dispatch_token, ":null": "NULL", ":rp": runpod_job_id},
    )
    if not recorded:
        fresh = table.get_job(job.id)
        if fresh is not None and fresh.runpod_job_id == runpod_job_id:
            recorded = True  # the worker's `started` event got here first
        elif fresh is not None and fresh.status == JobStatus.CANCELLING and fresh.dispatch_token == job.dispatch_token:
            # Cancelled while /run was in flight: keep the id so the RunPod outcome settles the cancel, and stop the run.
            table.update_job(job.id, set_fields={"runpod_job_id": runpod_job_id}, only_if_status=[JobStatus.CANCELLING],
                             condition="dispatch_token = :tok", values={":tok": job.dispatch_token})
            _cancel_quietly(client, job.endpoint_id, runpod_job_id, job.id)
            table.append_event(job.id, EventType.DISPATCHED, {"runpod_job_id": runpod_job_id, "endpoint_id": job.endpoint_id,
                                                              "attempt": job.attempts, "cancelled_on_arrival": True})
            return DispatchResult(job.id, "dispatched", "cancel requested while /run was in flight; run stopped")
        else:
            _cancel_quietly(client, job.endpoint_id, runpod_job_id, job.id)
            status = fresh.status if fresh else "missing"
            logger.warning("job moved on while /run was in flight; run stopped", extra={"job_id": job.id, "status": str(status)})
            return DispatchResult(job.id, "skipped", f"job became {status} while /run was in flight; run {runpod_job_id} stopped")
    table.append_event(job.id, EventType.DISPATCHED, {"runpod_job_id": runpod_job_id, "endpoint_id": job.endpoint_id,
                                                      "attempt": job.attempts, "dispatch_attempt": job.dispatch_attempts})
    metrics.add_metric(name="JobsDispatched", unit="Count", value=1)
    logger.info("job dispatched", extra={"job_id": job.id, "runpod_job_id": runpod_job_id, "endpoint_id": job.endpoint_id})
    return DispatchResult(job.id, "dispatched", runpod_job_id)


def _cancel_quietly(client: RunPodClient, endpoint_id: str | None, runpod_job_id: str, job_id: str) -> None:
    if not endpoint_id:
        return
    try:
        client.cancel(endpoint_id, runpod_job_id)
    except RunPodError as exc:
        logger.warning("could not cancel an unwanted RunPod run", extra={"job_id": job_id, "runpod_job_id": runpod_job_id,
                                                                          "cause": str(exc)})


def _outcome_unknown(table: JobsTable, job: Job, reason: str) -> DispatchResult:
    deadline = unknown_outcome_deadline(job)
    table.update_job(job.id, set_fields={"next_attempt_at": to_jsonable_python(deadline)}, only_if_status=[JobStatus.STARTING],
                     condition="dispatch_token = :tok", values={":tok": job.dispatch_token})
    table.append_event(job.id, EventType.DISPATCH_FAILED, {
        "outcome": "unknown", "reason": reason, "attempt": job.attempts, "dispatch_attempt": job.dispatch_attempts,
        "message": "RunPod may have accepted the job; waiting for its worker to report before trying again",
        "redispatch_not_before": deadline.isoformat() if deadline else None,
    })
    metrics.add_metric(name="DispatchOutcomeUnknown", unit="Count", value=1)
    logger.warning("/run outcome unknown; not retried", extra={"job_id": job.id, "reason": reason})
    return DispatchResult(job.id, "unknown", reason)


def requeue_claimed(table: JobsTable, job: Job, reason: str, *, delay_seconds: float | None = None) -> DispatchResult:
    """Put a claimed job whose /run took nothing back in the queue (releases its slot), or fail it after N tries."""
    return _requeue(table, job, reason, delay_seconds=delay_seconds)


def _requeue(table: JobsTable, job: Job, reason: str, *, delay_seconds: float | None = None) -> DispatchResult:
    settings = get_settings()
    if job.dispatch_attempts >= settings.max_dispatch_attempts:
        return _fail_claimed(table, job, JobError(
            code="RUNPOD_UNAVAILABLE", kind=ErrorKind.SYSTEM,
            message=f"RunPod did not accept the job after {job.dispatch_attempts} dispatch attempts (last: {reason}); retry later"))
    delay = redispatch_delay(job.dispatch_attempts) if delay_seconds is None else delay_seconds
    next_at = utcnow() + timedelta(seconds=delay)
    try:
        table.transition(job, JobStatus.QUEUED, next_attempt_at=next_at, dispatch_token=None, dispatched_at=None,
                         runpod_job_id=None, endpoint_id=None)
    except InvalidTransition:
        return DispatchResult(job.id, "skipped", "job changed while being requeued")
    table.append_event(job.id, EventType.DISPATCH_FAILED, {"outcome": "refused", "reason": reason, "attempt": job.attempts,
                                                           "dispatch_attempt": job.dispatch_attempts,
                                                           "next_attempt_at": next_at.isoformat()})
    metrics.add_metric(name="DispatchRequeued", unit="Count", value=1)
    logger.warning("RunPod refused /run; job back in the queue", extra={"job_id": job.id, "reason": reason, "next_attempt_at": str(next_at)})
    return DispatchResult(job.id, "requeued", reason)


def _fail_claimed(table: JobsTable, job: Job, error: JobError) -> DispatchResult:
    finish_job(table, job, Outcome(status="failed", source="dispatch", error=error, retryable=False), start_next=False)
    return DispatchResult(job.id, "failed", error.code)


def _fail_unclaimed(table: JobsTable, job: Job, error: JobError) -> DispatchResult:
    try:
        table.transition(job, JobStatus.FAILED, error=error)
    except InvalidTransition:
        return DispatchResult(job.id, "skipped", "job changed concurrently")
    table.append_event(job.id, EventType.FAILED, {"source": "dispatch", "error": error.model_dump(mode="json")})
    return DispatchResult(job.id, "failed", error.code)


def start_next_queued(table: JobsTable | None = None, *, max_starts: int = 1, max_candidates: int = 10,
                      client: RunPodClient | None = None) -> list[DispatchResult]:
    """Start up to `max_starts` queued jobs, oldest first, skipping ones not due or whose owner is at its limit.

    Called whenever a slot frees (terminal transition, requeue) and by reconcile. Stops at the first
    global CapacityFull. Bounded: at most `max_candidates` jobs are looked at.
    """
    table = table or JobsTable()
    results: list[DispatchResult] = []
    started = 0
    cursor: str | None = None
    seen = 0
    now = utcnow()
    while seen < max_candidates and started < max_starts:
        page = table.list_jobs_by_status(JobStatus.QUEUED, limit=min(25, max_candidates - seen), cursor=cursor)
        for candidate in page.items:
            seen += 1
            if not is_due(candidate, now):
                continue
            fresh = table.get_job(candidate.id)  # the index is eventually consistent; the claim needs the current version
            if fresh is None or is_terminal(fresh.status):
                continue
            result = dispatch_queued(table, fresh, client=client)
            results.append(result)
            if result.outcome == "dispatched":
                started += 1
            if result.outcome == "capacity_full" and result.capacity_scope == "global":
                return results
            if started >= max_starts or seen >= max_candidates:
                return results
        cursor = page.next_cursor
        if not cursor:
            break
    return results
