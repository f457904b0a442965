"""Retry a failed or cancelled job (POST /v1/jobs/{id}/retry; DESIGN §4, §8).

Terminal states never change, so a retry is a NEW job: same owner, dataset, preset and options,
`retry_of` = the old id, `attempts` = old + 1, source `retry`, resuming from the old job's newest
complete stored checkpoint (every file of its step, `resume_files`) and the optimizer state saved with it. The new job is queued, so the stream
dispatches it like any other. Retrying the same job twice returns the job the first retry made.
"""

from __future__ import annotations

from typing import Any

from ..dal.jobs_table import JobsTable
from ..models.common import new_id, utcnow
from ..models.errors import Conflict
from ..models.event import EventType
from ..models.job import Cost, Job, JobSource, Progress
from ..models.status import JobStatus
from ..observability import logger
from .checkpoints import newest_checkpoint
from .create_job import record_created_once

RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELLED)


def retry_job(owner: str, job_id: str) -> Job:
    table = JobsTable()
    old = table.get_job_for_owner(job_id, owner)
    if old.status not in RETRYABLE:
        raise Conflict(f"only failed or cancelled jobs can be retried; job {job_id} is {old.status}", code="JOB_NOT_RETRYABLE",
                       details={"status": str(old.status)})
    if old.retried_by:
        existing = table.get_job(old.retried_by)
        if existing is not None:
            return _made_before(table, existing)
        # The first retry claimed the id and stopped before writing the job: finish its work under that id.
        return _create_retry(table, old, old.retried_by)
    new_job_id = new_id("job")
    # Claim first, then create: a queued job that lost the race would be dispatched before it could be removed.
    if not table.update_job(old.id, set_fields={"retried_by": new_job_id}, condition="attribute_not_exists(retried_by) OR "
                            "attribute_type(retried_by, :null)", values={":null": "NULL"}):
        fresh = table.get_job(old.id)
        if fresh is not None and fresh.retried_by:
            existing = table.get_job(fresh.retried_by)
            return _made_before(table, existing) if existing else _create_retry(table, fresh, fresh.retried_by)
        raise Conflict(f"job {job_id} changed while being retried; try again", code="CONCURRENT_UPDATE")
    return _create_retry(table, old, new_job_id)


def _create_retry(table: JobsTable, old: Job, new_job_id: str) -> Job:
    stored = newest_checkpoint(table, old)
    resume_step = stored.checkpoint.step if stored else 0
    total = old.progress.total_steps or old.hyperparameters.steps
    now = utcnow()
    job = Job(
        id=new_job_id, owner=old.owner, status=JobStatus.QUEUED, name=old.name, preset=old.preset, dataset_id=old.dataset_id,
        trigger_word=old.trigger_word, hyperparameters=old.hyperparameters, samples=old.samples, checkpoints=old.checkpoints,
        notify=old.notify, metadata=old.metadata, source=JobSource.RETRY, estimate=old.estimate, gpu_class=old.gpu_class,
        cost=Cost(estimated_usd=old.cost.estimated_usd), attempts=old.attempts + 1, retry_of=old.id,
        resume_from=stored.checkpoint if stored else None, resume_optimizer=stored.optimizer if stored else None,
        resume_files=list(stored.files) if stored else [],
        progress=Progress(step=resume_step, total_steps=total, percent=round(100.0 * resume_step / total, 1) if total else 0.0),
        created_at=now, updated_at=now,
    )
    try:
        table.create_job(job)
    except Conflict:
        existing = table.get_job(new_job_id)
        if existing is not None:
            return _made_before(table, existing)
        raise
    # Dedupe-keyed like the recovery in _made_before: a racing second call may be adding it right now.
    table.append_event(job.id, EventType.CREATED, _created_event(job), dedupe_key="created", at=job.created_at)
    logger.info("job retried", extra={"job_id": job.id, "retry_of": old.id, "resume_step": resume_step})
    return job


def _created_event(job: Job) -> dict[str, Any]:
    return {"source": "retry", "retry_of": job.retry_of, "attempt": job.attempts, "resume_step": job.resume_from.step if job.resume_from else None}


def _made_before(table: JobsTable, existing: Job) -> Job:
    """The retry job an earlier call made; that call may have died between the job and its `created` event."""
    record_created_once(table, existing, _created_event(existing))
    return existing
