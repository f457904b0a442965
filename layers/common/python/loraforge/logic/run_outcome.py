"""Turn what RunPod or the worker says about a finished run into an `Outcome`, and apply it.

One function per source of truth, one apply path (`apply_runpod_status`) shared by the RunPod
webhook and reconcile, so a missed webhook and a delivered one end the same way.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ..contract import WorkerResult, parse_worker_error
from ..dal import keys
from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..models.artifact import Artifact, ArtifactKind
from ..models.errors import ErrorKind, JobError
from ..models.job import Job, JobResult
from ..observability import logger
from ..providers.runpod import RunPodJob
from .checkpoints import prune_checkpoints
from .finish_job import Outcome, OutcomeSource, finish_job
from .job_cost import record_run_cost
from .lora_result import lora_result

MAX_ERROR_MESSAGE = 500


def own_artifacts(job: Job, artifacts: list[Artifact]) -> list[Artifact]:
    """Only files under this job's prefix (the worker's upload policy allows no other; never trust a manifest blindly),
    named after their key's last segment (clients save a file under its `name`)."""
    prefix = keys.job_prefix(job.owner, job.id)
    kept = [a for a in artifacts if a.key.startswith(prefix) and ".." not in a.key.split("/")
            and a.name in (None, a.key.rsplit("/", 1)[-1])]
    if len(kept) != len(artifacts):
        logger.warning("artifacts outside the job prefix ignored", extra={"job_id": job.id, "dropped": len(artifacts) - len(kept)})
    return kept


def final_files(finals: list[Artifact], step: int | None = None) -> list[Artifact]:
    """The final artifacts of one step (default: the newest): every file of the final LoRA (Wan 2.2 14B: one per expert)."""
    finals = [a for a in finals if a.kind == ArtifactKind.FINAL]
    if not finals:
        return []
    step = max(a.step for a in finals) if step is None else step
    return [a for a in finals if a.step == step]


def recorded_result(table: JobsTable, job: Job) -> JobResult | None:
    """The result made of the final LoRA files already recorded for the job (every part; an earlier delivery of the worker's
    result recorded them), or None. 1 query."""
    files = final_files(table.list_artifacts(job.id, ArtifactKind.FINAL))
    return lora_result(files, steps=files[0].step) if files else None


def outcome_from_result(table: JobsTable, job: Job, result: WorkerResult, *, source: OutcomeSource, runpod_job_id: str | None) -> Outcome:
    """The worker's result manifest (RunPod output, or the data of its completed/failed/cancelled event).

    Records the artifacts it lists (idempotent), so the result never points at an unrecorded file.
    """
    artifacts = own_artifacts(job, [*result.artifacts, *([result.final] if result.final else [])])
    for artifact in artifacts:
        table.put_artifact(job.id, artifact)
    if any(a.kind in (ArtifactKind.CHECKPOINT, ArtifactKind.OPTIMIZER) for a in artifacts):
        # The manifest lists every checkpoint the worker uploaded, also those retention has deleted from S3 since: apply
        # retention again, so the listing never brings back a record whose file is gone.
        prune_checkpoints(table, Storage(), job)
    if result.status == "completed":
        # Every final file the manifest lists at the step of its `final` (a split LoRA has one per expert); a manifest whose
        # `final` is missing or outside the job's prefix falls back on the final files the worker's events recorded.
        files = final_files(artifacts, result.final.step) if result.final is not None and result.final in artifacts else []
        files = files or final_files(table.list_artifacts(job.id, ArtifactKind.FINAL))
        if not files:
            return Outcome(status="failed", source=source, runpod_job_id=runpod_job_id, error=JobError(
                code="RESULT_MISSING", kind=ErrorKind.SYSTEM, message="the worker reported success but named no final LoRA file"))
        return Outcome(status="succeeded", source=source, runpod_job_id=runpod_job_id, result=lora_result(
            files, steps=result.steps or files[0].step, final_loss=result.final_loss, resume=result.resume))
    if result.status == "cancelled":
        return Outcome(status="cancelled", source=source, runpod_job_id=runpod_job_id)
    error = result.error or JobError(code="WORKER_FAILED", message="the worker failed without a reason", kind=ErrorKind.SYSTEM)
    return Outcome(status="failed", source=source, runpod_job_id=runpod_job_id, error=error)


def _runpod_error_message(error: Any) -> str:
    """RunPod's `error` is a string, often a JSON string with error_type/error_message/traceback: keep it short."""
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            error = parsed
        else:
            return error[:MAX_ERROR_MESSAGE]
    if isinstance(error, dict):
        kind, message = error.get("error_type"), error.get("error_message") or error.get("message")
        if message:
            return (f"{kind}: {message}" if kind else str(message))[:MAX_ERROR_MESSAGE]
    return str(error)[:MAX_ERROR_MESSAGE] if error else "no reason given"


def outcome_from_runpod(table: JobsTable, job: Job, run: RunPodJob, *, source: OutcomeSource) -> Outcome:
    """A terminal RunPod status (COMPLETED, FAILED, CANCELLED, TIMED_OUT) as an Outcome."""
    result: WorkerResult | None = None
    if isinstance(run.output, dict):
        try:
            result = WorkerResult.model_validate(run.output)
        except ValidationError:
            logger.warning("RunPod output is not a worker result", extra={"job_id": job.id, "runpod_job_id": run.id})
    if run.status == "COMPLETED":
        if result is not None:
            return outcome_from_result(table, job, result, source=source, runpod_job_id=run.id)
        # RunPod can report COMPLETED without the output (results over its payload cap are dropped at job-done):
        # the worker's own events may still have recorded the final file.
        recorded = recorded_result(table, job)
        if recorded is not None:
            return Outcome(status="succeeded", source=source, runpod_job_id=run.id, result=recorded)
        return Outcome(status="failed", source=source, runpod_job_id=run.id, error=JobError(
            code="RESULT_MISSING", kind=ErrorKind.SYSTEM, message="RunPod reported the run COMPLETED without a result manifest"))
    if run.status == "FAILED":
        # The worker fails a run by returning `error: "<CODE>: <message>"`; RunPod's SDK pops it from the output, so the
        # string is all that is left of the structured error: its code gives the kind (contract.ERROR_KINDS).
        error = (result.error if result is not None else None) or parse_worker_error(run.error)
        if result is not None and error is not None:
            return outcome_from_result(table, job, result.model_copy(update={"status": "failed", "error": error}), source=source,
                                       runpod_job_id=run.id)
        return Outcome(status="failed", source=source, runpod_job_id=run.id, error=error or JobError(
            code="WORKER_CRASHED", kind=ErrorKind.SYSTEM, message=f"the worker crashed: {_runpod_error_message(run.error)}"))
    if run.status == "CANCELLED":
        return Outcome(status="cancelled", source=source, runpod_job_id=run.id)
    return Outcome(status="failed", source=source, runpod_job_id=run.id, error=JobError(
        code="RUNPOD_TIMED_OUT", kind=ErrorKind.SYSTEM,
        message="RunPod stopped the run: it waited in RunPod's queue past its ttl (no GPU free) or ran past its executionTimeout"))


def apply_runpod_status(table: JobsTable, job: Job, run: RunPodJob, *, source: OutcomeSource) -> Job | None:
    """Apply a terminal RunPod status of the job's own run: cost first (also when the job already ended), then the state."""
    if not run.is_terminal or run.id != job.runpod_job_id:
        return None
    record_run_cost(table, job, run)
    return finish_job(table, job, outcome_from_runpod(table, job, run, source=source))
