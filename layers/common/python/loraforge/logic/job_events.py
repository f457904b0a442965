"""`GET /v1/jobs/{id}/events?after=` and `GET /v1/jobs/{id}/metrics`: what happened to a job, and its loss curve."""

from __future__ import annotations

from ..dal.jobs_table import JobsTable
from ..models.event import JobEvent, MetricPoint


def job_events(owner: str, job_id: str, *, after: int, limit: int) -> tuple[list[JobEvent], int | None]:
    """Events with seq > `after`, oldest first, and the `after` of the next page (None when this page is the last one).

    1 read (ownership) + 1 query.
    """
    table = JobsTable()
    table.get_job_for_owner(job_id, owner)
    events, more = table.list_events_page(job_id, after=after, limit=limit)
    return events, (events[-1].seq if more and events else None)


def job_metrics(owner: str, job_id: str) -> list[MetricPoint]:
    """Loss and learning rate by step, in step order. 1 read + 1 query per 1 MB of points.

    Every step's point (one item per step, steps 0..total): the DAL's default cap (5,000) is below a preset's step bound
    (6,000), and a loss curve cut short with no cursor would look like the whole run.
    """
    table = JobsTable()
    job = table.get_job_for_owner(job_id, owner)
    return table.list_metrics(job_id, limit=max(job.hyperparameters.steps, job.progress.total_steps or 0) + 1)
