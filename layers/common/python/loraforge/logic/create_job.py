"""`POST /v1/jobs` and drop-to-train: check a job request against its dataset and preset, then queue it.

The job is written in `queued` with a `created` event; the DynamoDB stream hands it to dispatch.

Idempotency (powertools idempotency on the jobs table, keys scoped by owner and source): the same
owner + key + body returns the job the first call created; the same key with another body is
refused with 409 IDEMPOTENCY_KEY_REUSED. A failed call (bad input, dataset not ready) leaves no
record, so the same key may be used again once the cause is fixed.

Exactly once even when the Lambda dies half-way: the powertools record goes INPROGRESS → job written →
COMPLETE, and a death between the job write and COMPLETE (or any failure after the job write) leaves a record
that stops blocking at the Lambda deadline, or none at all. So a keyed job's id is not random but derived from
(owner, source, key), its write is conditional, and the item keeps a fingerprint of the request: a retry that
gets past the record collides with the job already written and returns it (adding the `created` event if the
first call died before it), or gets 409 IDEMPOTENCY_KEY_REUSED for another body. The normal path costs the same
DynamoDB calls as before: the collision comes back from the conditional write itself.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from ..dal.clients import client
from ..dal.jobs_table import JobExists, JobsTable
from ..models.common import new_id, stable_id, utcnow
from ..models.dataset import DatasetKind
from ..models.errors import Conflict, InvalidInput
from ..models.event import EventType
from ..models.job import Cost, Job, JobSource, Progress
from ..models.requests import CreateJobRequest
from ..models.status import JobStatus
from ..observability import logger, metrics
from ..settings import get_settings
from .estimate_job import plan_job, ready_dataset

IDEMPOTENCY_TTL_SECONDS = 24 * 3600
# Which dataset kinds a preset's modality trains on (video models also learn from still images).
TRAINABLE_KINDS: dict[str, frozenset[DatasetKind]] = {
    "image": frozenset({DatasetKind.IMAGES}),
    "video": frozenset({DatasetKind.IMAGES, DatasetKind.VIDEO}),
}
# Idempotency records share the jobs table. Their partition key must not look like a job or a
# dataset (the stream consumers filter on JOB#/DS# META items).
IDEMPOTENCY_PARTITION = "IDEMPOTENCY#create_job"


def create_job(
    owner: str,
    request: CreateJobRequest,
    *,
    source: JobSource = JobSource.API,
    idempotency_key: str | None = None,
    lambda_context: Any = None,
) -> Job:
    """Queue a training job for `owner`. Raises NotFound, Conflict or InvalidInput with a stable code.

    `lambda_context` (optional) bounds how long an in-progress idempotency record blocks a retry of
    the same key when this invocation dies half-way: until the Lambda's own deadline.
    """
    if idempotency_key is None:
        return _create(owner=owner, request=request, source=source, idempotency_key=None)
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    create_once = _idempotent(_create, lambda_context)
    data = {"owner": owner, "source": str(source), "key": idempotency_key, "request": request.model_dump(mode="json")}
    try:
        return create_once(idempotency_input=data, owner=owner, request=request, source=source, idempotency_key=idempotency_key)
    except IdempotencyValidationError as exc:
        raise _key_reused() from exc
    except IdempotencyAlreadyInProgressError as exc:
        raise Conflict(
            "a request with this Idempotency-Key is still being processed: retry in a few seconds",
            code="IDEMPOTENCY_KEY_IN_USE",
        ) from exc


def _key_reused() -> Conflict:
    return Conflict(
        "this Idempotency-Key was already used with a different request body: use a new key for a new job",
        code="IDEMPOTENCY_KEY_REUSED",
    )


def keyed_job_id(owner: str, source: JobSource, idempotency_key: str) -> str:
    """The id of the job an Idempotency-Key creates: every attempt of one (owner, source, key) writes the same item."""
    return stable_id("job", "create_job", owner, str(source), idempotency_key)


def request_fingerprint(owner: str, source: JobSource, request: CreateJobRequest) -> str:
    """sha256 of who asked for what. Fields left at their defaults are left out, so a field added to the request
    model later (with a default) does not turn a retry across a deploy into a 409."""
    asked = request.model_dump(mode="json", exclude_defaults=True)
    return hashlib.sha256(json.dumps([owner, str(source), asked], sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _idempotent(function: Any, lambda_context: Any) -> Any:
    """Wrap `function` with powertools idempotency. Built per call: settings and clients change in tests."""
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import PydanticSerializer

    persistence = DynamoDBPersistenceLayer(
        table_name=get_settings().table_name,
        key_attr="pk",
        sort_key_attr="sk",
        static_pk_value=IDEMPOTENCY_PARTITION,
        expiry_attr="expires_at",
        boto3_client=client("dynamodb"),
    )
    config = IdempotencyConfig(
        event_key_jmespath="[owner, source, key]",
        payload_validation_jmespath="request",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
        lambda_context=lambda_context,
    )
    return idempotent_function(
        function,
        data_keyword_argument="idempotency_input",
        persistence_store=persistence,
        config=config,
        output_serializer=PydanticSerializer(model=Job),
        key_prefix="create_job",
    )


def _create(*, owner: str, request: CreateJobRequest, source: JobSource, idempotency_key: str | None,
            idempotency_input: dict[str, Any] | None = None) -> Job:
    dataset = ready_dataset(owner, request.dataset_id)
    plan = plan_job(request, dataset=dataset)
    if dataset.kind not in TRAINABLE_KINDS.get(plan.preset.modality, frozenset()):
        raise InvalidInput(
            f"preset '{plan.preset.id}' trains on {plan.preset.modality} data; dataset {dataset.id} is a {dataset.kind} dataset",
            code="DATASET_KIND_MISMATCH",
            details={"dataset_kind": str(dataset.kind), "preset_modality": plan.preset.modality},
        )
    if dataset.stats.images < plan.preset.min_images:
        raise InvalidInput(
            f"dataset {dataset.id} has {dataset.stats.images} usable images; preset '{plan.preset.id}' needs at least "
            f"{plan.preset.min_images} (recommended {plan.preset.recommended_images})",
            code="TOO_FEW_IMAGES",
            details={"images": dataset.stats.images, "min_images": plan.preset.min_images},
        )
    now = utcnow()
    job = Job(
        id=new_id("job") if idempotency_key is None else keyed_job_id(owner, source, idempotency_key),
        owner=owner,
        status=JobStatus.QUEUED,
        name=request.name,
        preset=plan.preset.id,
        dataset_id=dataset.id,
        trigger_word=request.trigger_word,
        hyperparameters=plan.hyperparameters,
        samples=request.samples,
        checkpoints=request.checkpoints,
        notify=request.notify,
        metadata=request.metadata,
        source=source,
        progress=Progress(total_steps=plan.hyperparameters.steps),
        cost=Cost(estimated_usd=plan.estimate.cost_usd),
        estimate=plan.estimate,
        gpu_class=plan.preset.gpu_class,
        created_at=now,
        updated_at=now,
    )
    table = JobsTable()
    fingerprint = None if idempotency_key is None else request_fingerprint(owner, source, request)
    try:
        table.create_job(job, request_fingerprint=fingerprint)
    except JobExists as exists:
        if fingerprint is None:
            raise
        return _written_before(table, exists, fingerprint)
    table.append_event(job.id, EventType.CREATED, _created_event(job))
    metrics.add_metric(name="JobsCreated", unit=MetricUnit.Count, value=1)
    logger.info("job created", extra={"job_id": job.id, "owner": owner, "preset": job.preset, "source": str(source)})
    return job


def _created_event(job: Job) -> dict[str, Any]:
    return {"source": str(job.source), "preset": job.preset, "dataset_id": job.dataset_id,
            "total_steps": job.hyperparameters.steps, "estimated_usd": job.cost.estimated_usd}


def record_created_once(table: JobsTable, job: Job, data: dict[str, Any]) -> None:
    """Add `job`'s `created` event unless it has one: an earlier call wrote the job and may have died before its event.

    The event is among the job's first few (dispatch only adds events after the job exists); the dedupe marker keeps
    two racing recoveries from both adding it.
    """
    if not any(event.type == EventType.CREATED for event in table.list_events(job.id, limit=10)):
        table.append_event(job.id, EventType.CREATED, data, dedupe_key="created", at=job.created_at)


def _written_before(table: JobsTable, exists: JobExists, fingerprint: str) -> Job:
    """The key's job is already in the table: an earlier attempt wrote it and died before its idempotency record
    said so. The same request gets that job; another request is a reused key."""
    existing = exists.existing
    if existing is None or exists.request_fingerprint != fingerprint:
        raise _key_reused()
    record_created_once(table, existing, _created_event(existing))
    metrics.add_metric(name="JobCreationsRecovered", unit=MetricUnit.Count, value=1)
    logger.warning("job creation recovered: an earlier attempt with this idempotency key wrote the job and died",
                   extra={"job_id": existing.id, "owner": existing.owner, "status": str(existing.status)})
    return existing
