"""POST /v1/hooks/worker/{job}: signed events from the worker (Standard Webhooks, per-job secret).

Delivery is at least once and may be out of order, so every effect is idempotent:
- events are keyed by (attempt, seq): a redelivery is recorded once (`dedupe_key`);
- progress moves only forward (conditional on progress.step); metrics and artifacts are keyed by step/name;
  the one way back is the worker's RESUME_NOT_HONOURED warning (the engine restarted below the checkpoint it was
  given), applied once: only when that event is recorded for the first time;
- an event of an older attempt, of a RunPod run other than the job's recorded one (`runpod_job_id`: a refused
  duplicate run may still report), or one after the job ended, changes nothing (200 `ignored`);
- the first event moves `starting -> running`; the `started` event carries the dispatch token and
  the RunPod job id: one RunPod run per token is accepted, any other gets 409 DUPLICATE_RUN (its
  worker stops before training) and RunPod is asked to cancel it;
- completed/failed/cancelled apply the end of the run through the same code as the RunPod webhook.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from ..contract import (
    RESUME_NOT_HONOURED,
    ProgressData,
    ResumeNotHonouredData,
    StartedData,
    WorkerErrorCode,
    WorkerEvent,
    WorkerEventType,
    WorkerResult,
)
from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..models.artifact import Artifact, ArtifactKind
from ..models.errors import Conflict, InvalidInput, InvalidTransition, NotFound, Unauthorized
from ..models.event import EventType, MetricPoint
from ..models.job import Job, Progress
from ..models.status import JobStatus
from ..observability import logger
from ..providers.runpod import RunPodError, get_runpod_client
from ..secrets_store import signing_key
from ..settings import get_settings
from ..signing import SignatureError, constant_time_equals, job_secret, verify
from .checkpoints import prune_checkpoints
from .finish_job import finish_job
from .hook_reply import HookReply, applied, ignored
from .run_outcome import outcome_from_result, own_artifacts

ACTIVE = (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING)
EVENT_TYPES = {
    WorkerEventType.STARTED: EventType.STARTED, WorkerEventType.PROGRESS: EventType.PROGRESS,
    WorkerEventType.CHECKPOINT: EventType.CHECKPOINT, WorkerEventType.SAMPLE: EventType.SAMPLE, WorkerEventType.LOG: EventType.LOG,
}
TERMINAL_EVENTS = (WorkerEventType.COMPLETED, WorkerEventType.FAILED, WorkerEventType.CANCELLED)
ARTIFACT_KINDS = {WorkerEventType.CHECKPOINT: (ArtifactKind.CHECKPOINT, ArtifactKind.OPTIMIZER), WorkerEventType.SAMPLE: (ArtifactKind.SAMPLE,)}


def verify_worker_signature(job_id: str, headers: Mapping[str, str], body: bytes) -> None:
    try:
        verify(job_secret(signing_key(), job_id), dict(headers), body)
    except SignatureError as exc:
        raise Unauthorized(f"invalid worker event signature: {exc}", code="INVALID_SIGNATURE") from exc


def apply_worker_event(job_id: str, headers: Mapping[str, str], body: bytes) -> HookReply:
    verify_worker_signature(job_id, headers, body)
    try:
        event = WorkerEvent.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        details = exc.errors(include_url=False, include_input=False) if isinstance(exc, ValidationError) else None
        raise InvalidInput("not a worker event", code="INVALID_WORKER_EVENT", details=details) from exc
    if event.job_id != job_id:
        raise InvalidInput("the event's job_id does not match the URL", code="JOB_ID_MISMATCH")
    table = JobsTable()
    job = table.get_job(job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found", code="JOB_NOT_FOUND")
    logger.append_keys(job_id=job_id, attempt=event.attempt, seq=event.seq, event_type=str(event.type))
    if event.type == WorkerEventType.STARTED:
        return _apply_started(table, job, event)
    if event.attempt != job.attempts:
        return ignored(f"event of attempt {event.attempt}; the job is on attempt {job.attempts}")
    if event.runpod_job_id and job.runpod_job_id and event.runpod_job_id != job.runpod_job_id:
        return ignored(f"event of RunPod run {event.runpod_job_id}; the job's run is {job.runpod_job_id}")
    if job.status not in ACTIVE:
        return ignored(f"job is {job.status}")
    if event.type in TERMINAL_EVENTS:
        return _apply_end(table, job, event)
    if event.type == WorkerEventType.PROGRESS:
        _apply_progress(table, job, event)
    elif event.type in ARTIFACT_KINDS:
        _apply_artifact(table, job, event)
    else:
        _touch(table, job, event.at)
    restart = _resume_not_honoured(event)
    _mark_running(table, job, event.at)
    recorded = table.append_event(job.id, EVENT_TYPES[event.type], _event_data(event), dedupe_key=_dedupe_key(event), at=event.at)
    if recorded and restart is not None:
        _restart_progress(table, job, restart)
    return applied() if recorded else ignored("duplicate delivery")


def _resume_not_honoured(event: WorkerEvent) -> ResumeNotHonouredData | None:
    if event.type != WorkerEventType.LOG or event.data.get("code") != RESUME_NOT_HONOURED:
        return None
    return _parse_event_data(ResumeNotHonouredData, event, "RESUME_NOT_HONOURED event data is invalid")


def _restart_progress(table: JobsTable, job: Job, restart: ResumeNotHonouredData) -> None:
    """The engine trains again from `actual_step`: the job says so instead of holding the checkpoint's step until the
    engine passes it. Only on the event's first recording, so a redelivery cannot pull newer progress back."""
    total = job.progress.total_steps
    progress = Progress(step=restart.actual_step, total_steps=total,
                        percent=round(min(100.0, 100.0 * restart.actual_step / total), 1) if total else 0.0)
    table.update_job(job.id, set_fields={"progress": progress.model_dump(mode="json")}, only_if_status=ACTIVE,
                     condition="attempts = :att AND progress.step > :step", values={":att": job.attempts, ":step": restart.actual_step})
    logger.warning("the engine did not resume from the checkpoint; progress goes back to where it trains from",
                   extra={"expected_step": restart.expected_step, "actual_step": restart.actual_step})


def _dedupe_key(event: WorkerEvent) -> str:
    return f"w{event.attempt}-{event.seq}"


def _event_data(event: WorkerEvent) -> dict[str, object]:
    return {**event.data, "attempt": event.attempt, "worker_seq": event.seq}


def _touch(table: JobsTable, job: Job, at: datetime) -> None:
    """Worker liveness for reconcile's silence check."""
    table.update_job(job.id, set_fields={"last_event_at": _iso(at)}, only_if_status=ACTIVE,
                     condition="attempts = :att", values={":att": job.attempts})


def _iso(at: datetime) -> str:
    return to_jsonable_python(at)


def _mark_running(table: JobsTable, job: Job, at: datetime) -> None:
    """The attempt's first event: `started_at` is the job's first start, `attempt_started_at` this attempt's (what its run time
    is measured from when it ends; finish_job clears it when it queues the next attempt)."""
    if job.status != JobStatus.STARTING:
        return
    try:
        table.transition(job, JobStatus.RUNNING, started_at=job.started_at or at, attempt_started_at=at)
    except InvalidTransition:
        pass  # someone else moved it (another event, a cancel, the end of the run): nothing to do


M = TypeVar("M", bound=BaseModel)


def _parse_event_data(model: type[M], event: WorkerEvent, message: str) -> M:
    """The event's `data` as `model`, or a 422 INVALID_WORKER_EVENT naming what is wrong."""
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise InvalidInput(message, code="INVALID_WORKER_EVENT", details=exc.errors(include_url=False, include_input=False)) from exc


def _apply_progress(table: JobsTable, job: Job, event: WorkerEvent) -> None:
    data = _parse_event_data(ProgressData, event, "progress event data is invalid")
    total = data.total_steps or job.progress.total_steps
    progress = Progress(step=data.step, total_steps=total, percent=round(min(100.0, 100.0 * data.step / total), 1) if total else 0.0,
                        loss=data.loss, eta_seconds=data.eta_seconds)
    # Out of order: an older step never overwrites a newer one (the condition fails and that is fine).
    table.update_job(job.id, set_fields={"progress": progress.model_dump(mode="json"), "last_event_at": _iso(event.at),
                                         "worker_seq": event.seq},
                     only_if_status=ACTIVE, condition="attempts = :att AND progress.step <= :step",
                     values={":att": job.attempts, ":step": data.step})
    points = {data.step: MetricPoint(step=data.step, loss=data.loss, lr=data.lr, at=event.at)}
    for raw in data.metrics:
        try:
            point = MetricPoint.model_validate(raw)
        except ValidationError:
            continue
        points[point.step] = point
    table.put_metrics(job.id, [p for p in points.values() if p.loss is not None or p.lr is not None])


def _apply_artifact(table: JobsTable, job: Job, event: WorkerEvent) -> None:
    artifact = _parse_event_data(Artifact, event, f"{event.type} event data is not an artifact")
    if artifact.kind not in ARTIFACT_KINDS[event.type] or not own_artifacts(job, [artifact]):
        raise InvalidInput(f"a {event.type} event cannot record a {artifact.kind} at {artifact.key}", code="INVALID_ARTIFACT")
    table.put_artifact(job.id, artifact)
    _touch(table, job, event.at)
    if artifact.kind == ArtifactKind.CHECKPOINT:
        prune_checkpoints(table, Storage(), job)


def _apply_end(table: JobsTable, job: Job, event: WorkerEvent) -> HookReply:
    result = _parse_event_data(WorkerResult, event, f"{event.type} event data is not a worker result")
    if result.error is not None and result.error.code == WorkerErrorCode.DUPLICATE_RUN:
        # A run we refused (409 on its `started`) reporting its own stop: it says nothing about the job's run.
        return ignored("report of a refused duplicate run")
    if event.type == WorkerEventType.CANCELLED and job.status != JobStatus.CANCELLING:
        # RunPod stops a worker the same way for a cancel, its ttl and its executionTimeout: only RunPod's status tells them apart.
        return ignored("the job was not being cancelled; RunPod's status decides how this run ended")
    outcome = outcome_from_result(table, job, result, source="worker_event", runpod_job_id=job.runpod_job_id)
    # The run's end on the worker's clock, the clock its start was taken on: the measured run time ignores delivery delay.
    outcome = outcome.model_copy(update={"ended_at": event.at})
    finished = finish_job(table, job, outcome)
    table.append_event(job.id, EventType.LOG, {"message": f"worker reported {event.type}", "attempt": event.attempt,
                                               "worker_seq": event.seq}, dedupe_key=_dedupe_key(event), at=event.at)
    return applied(f"job is {finished.status}") if finished else ignored("the job had already ended")


def _apply_started(table: JobsTable, job: Job, event: WorkerEvent) -> HookReply:
    started = _parse_event_data(StartedData, event, "started event data needs dispatch_token and runpod_job_id")
    if event.runpod_job_id and event.runpod_job_id != started.runpod_job_id:
        raise InvalidInput("the started event names two different RunPod runs", code="INVALID_WORKER_EVENT")
    if job.runpod_job_id == started.runpod_job_id and event.attempt == job.attempts:
        if job.status == JobStatus.CANCELLING:
            raise Conflict("the job is being cancelled: stop", code="JOB_CANCELLED")
        if job.status in ACTIVE:
            _mark_running(table, job, event.at)
            table.append_event(job.id, EventType.STARTED, _event_data(event), dedupe_key=_dedupe_key(event), at=event.at)
            return applied()
        return ignored(f"job is {job.status}")  # a redelivery after the end: the run is over anyway
    current = (job.status in ACTIVE and event.attempt == job.attempts and job.dispatch_token is not None
               and constant_time_equals(started.dispatch_token, job.dispatch_token))
    if current and table.update_job(
        job.id, set_fields={"runpod_job_id": started.runpod_job_id, "last_event_at": _iso(event.at)}, only_if_status=ACTIVE,
        condition="attempts = :att AND dispatch_token = :tok AND (attribute_not_exists(runpod_job_id) OR "
                  "attribute_type(runpod_job_id, :null) OR runpod_job_id = :rp)",
        values={":att": job.attempts, ":tok": started.dispatch_token, ":null": "NULL", ":rp": started.runpod_job_id},
    ):
        fresh = table.get_job(job.id) or job
        return _apply_started(table, fresh, event)
    _refuse_duplicate(table, job, started)
    raise Conflict("another RunPod run already holds this job, or the job no longer wants one: stop before training",
                   code="DUPLICATE_RUN", details={"runpod_job_id": started.runpod_job_id})


def _refuse_duplicate(table: JobsTable, job: Job, started: StartedData) -> None:
    endpoint_id = job.endpoint_id or get_settings().runpod_endpoints.get(job.gpu_class or "")
    logger.warning("duplicate run refused", extra={"runpod_job_id": started.runpod_job_id, "job_runpod_job_id": job.runpod_job_id})
    table.append_event(job.id, EventType.LOG, {"message": "refused a duplicate RunPod run; it stops before training",
                                               "runpod_job_id": started.runpod_job_id}, dedupe_key=f"dup-{started.runpod_job_id}")
    if endpoint_id:
        try:
            get_runpod_client(quick=True).cancel(endpoint_id, started.runpod_job_id)
        except RunPodError as exc:
            logger.warning("could not cancel the duplicate run", extra={"cause": str(exc)})
