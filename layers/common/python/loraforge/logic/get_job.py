"""`GET /v1/jobs/{id}` and `GET /v1/jobs`: the owner's jobs only (another owner's is a 404, never a 403)."""

from __future__ import annotations

from ..dal.jobs_table import JobsTable, Page
from ..models.job import Job
from ..models.status import JobStatus


def get_job(owner: str, job_id: str) -> Job:
    """1 consistent read."""
    return JobsTable().get_job_for_owner(job_id, owner)


def list_jobs(owner: str, *, limit: int, cursor: str | None, status: JobStatus | None) -> Page:
    """Newest first, one Query per page. With a status filter a page may hold fewer than `limit` items: follow next_cursor."""
    return JobsTable().list_jobs_by_owner(owner, limit=limit, cursor=cursor, status=status)
