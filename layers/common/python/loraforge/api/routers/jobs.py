"""/v1/jobs: create, list, read, cancel, retry, events, metrics, artifacts."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Query
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter
from aws_lambda_powertools.metrics import MetricUnit

from ...logic.create_job import create_job
from ...logic.get_job import get_job, list_jobs
from ...logic.job_artifacts import job_artifacts
from ...logic.job_events import job_events, job_metrics
from ...models.artifact import ArtifactKind, ArtifactLink
from ...models.base import DomainModel
from ...models.requests import CancelRequest, CreateJobRequest
from ...models.status import JobStatus
from ...observability import logger, metrics
from ..auth import JWT_SECURITY, OwnerId
from ..schemas import Cursor, EventList, JobIdPath, JobList, JobView, Limit, MetricList, responses

router = APIGatewayHttpRouter()
TAGS = ["jobs"]

IdempotencyKey = Annotated[
    str | None,
    Header(alias="idempotency-key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
           description="Any printable ASCII string up to 255 characters; the same key and body return the same job, "
                       "for as long as that job exists; the same key with another body is 409"),
]


class ArtifactList(DomainModel):
    items: list[ArtifactLink]


@router.post("/v1/jobs", status_code=201, summary="Queue a training job", tags=TAGS, security=JWT_SECURITY,
             description="Honours Idempotency-Key: the same key and body return the first call's job; "
                         "the same key with another body is 409 IDEMPOTENCY_KEY_REUSED.",
             responses=responses(201, 400, 401, 404, 409, 413, 422))
def post_job(owner: OwnerId, body: Annotated[CreateJobRequest, Body(embed=False)], idempotency_key: IdempotencyKey = None) -> JobView:
    job = create_job(owner, body, idempotency_key=idempotency_key, lambda_context=router.lambda_context)
    logger.append_keys(job_id=job.id)
    return job.public()  # type: ignore[return-value]  # validated against JobView


@router.get("/v1/jobs", summary="Your jobs, newest first", tags=TAGS, security=JWT_SECURITY, responses=responses(200, 401, 422))
def get_jobs(
    owner: OwnerId,
    limit: Limit = 20,
    cursor: Cursor = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
) -> JobList:
    page = list_jobs(owner, limit=limit, cursor=cursor, status=status)
    return {"items": [j.public() for j in page.items], "next_cursor": page.next_cursor}  # type: ignore[return-value]


@router.get("/v1/jobs/<job_id>", summary="A job: status, progress, cost, result", tags=TAGS, security=JWT_SECURITY,
            responses=responses(200, 401, 404))
def get_job_detail(owner: OwnerId, job_id: JobIdPath) -> JobView:
    logger.append_keys(job_id=job_id)
    return get_job(owner, job_id).public()  # type: ignore[return-value]


@router.post("/v1/jobs/<job_id>/cancel", summary="Cancel a job", tags=TAGS, security=JWT_SECURITY,
             description="queued → cancelled at once; an active job → cancelling, and RunPod is asked to stop it. "
                         "keep_latest makes the newest stored checkpoint the result. 409 for a finished job.",
             responses=responses(200, 400, 401, 404, 409, 413, 422))
def post_cancel(owner: OwnerId, job_id: JobIdPath, body: Annotated[CancelRequest | None, Body(embed=False)] = None) -> JobView:
    from ...logic.cancel_job import cancel_job  # only this route needs the RunPod client behind it

    logger.append_keys(job_id=job_id)
    keep_latest = (body or CancelRequest()).keep_latest
    job = cancel_job(owner, job_id, keep_latest)
    metrics.add_metric(name="JobsCancelled", unit=MetricUnit.Count, value=1)
    logger.info("job cancel requested", extra={"status": str(job.status), "keep_latest": keep_latest})
    return job.public()  # type: ignore[return-value]


@router.post("/v1/jobs/<job_id>/retry", status_code=201, summary="Retry a failed or cancelled job from its last checkpoint",
             tags=TAGS, security=JWT_SECURITY,
             description="Creates a new job (retry_of = this job, attempts + 1) that resumes from the newest stored checkpoint. "
                         "409 unless the job is failed or cancelled.",
             responses=responses(201, 401, 404, 409))
def post_retry(owner: OwnerId, job_id: JobIdPath) -> JobView:
    from ...logic.retry_job import retry_job

    logger.append_keys(job_id=job_id)
    retry = retry_job(owner, job_id)
    logger.info("job retried", extra={"retry_job_id": retry.id, "attempt": retry.attempts})
    return retry.public()  # type: ignore[return-value]


@router.get("/v1/jobs/<job_id>/events", summary="What happened to a job, oldest first", tags=TAGS, security=JWT_SECURITY,
            responses=responses(200, 401, 404, 422))
def get_events(
    owner: OwnerId,
    job_id: JobIdPath,
    after: Annotated[int, Query(ge=0, le=10**12, description="Only events with a larger seq")] = 0,
    limit: Limit = 100,
) -> EventList:
    events, next_after = job_events(owner, job_id, after=after, limit=limit)
    return EventList(items=events, next_cursor=None if next_after is None else str(next_after))


@router.get("/v1/jobs/<job_id>/metrics", summary="Loss and learning rate by step", tags=TAGS, security=JWT_SECURITY,
            responses=responses(200, 401, 404))
def get_metrics(owner: OwnerId, job_id: JobIdPath) -> MetricList:
    points = job_metrics(owner, job_id)
    return {"items": [{"step": p.step, "loss": p.loss, "lr": p.lr} for p in points]}  # type: ignore[return-value]


@router.get("/v1/jobs/<job_id>/artifacts", summary="Checkpoints, samples, the final LoRA and logs, with presigned GET URLs",
            tags=TAGS, security=JWT_SECURITY, responses=responses(200, 401, 404, 422))
def get_artifacts(
    owner: OwnerId,
    job_id: JobIdPath,
    kind: Annotated[ArtifactKind | None, Query(description="Only artifacts of this kind")] = None,
) -> ArtifactList:
    return ArtifactList(items=job_artifacts(owner, job_id, kind=kind))
