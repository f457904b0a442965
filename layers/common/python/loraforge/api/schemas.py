"""Response bodies and request parameters of the HTTP API: they drive response validation and the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from pydantic import BaseModel, Field, create_model

from ..models.base import DomainModel
from ..models.dataset import Dataset
from ..models.event import JobEvent
from ..models.job import Job

JOB_ID_PATTERN = r"^job_[0-9a-z]{20}$"
DATASET_ID_PATTERN = r"^ds_[0-9a-z]{20}$"

JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (job_…)")]
DatasetIdPath = Annotated[str, Path(pattern=DATASET_ID_PATTERN, description="A dataset id (ds_…)")]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size, 1-100")]
Cursor = Annotated[str | None, Query(max_length=2048, description="next_cursor of the previous page")]


# -- the error shape ----------------------------------------------------------------------------------
class ErrorDetail(DomainModel):
    code: str = Field(description="Stable machine-readable code, e.g. DATASET_NOT_READY")
    message: str = Field(description="What went wrong and what to do, for a person")
    details: Any = Field(default=None, description="Structured context: validation problems, bounds, the request id of a 500…")


class ErrorBody(DomainModel):
    error: ErrorDetail


_ERROR_TEXT = {
    400: "The body is not a JSON object (INVALID_JSON)",
    401: "No valid bearer token (UNAUTHORIZED)",
    404: "No such resource for this owner (another owner's resource is also 404)",
    409: "The resource is not in a state that allows this",
    413: "The body is larger than 64 KiB (PAYLOAD_TOO_LARGE)",
    422: "The request is not valid (INVALID_INPUT or a specific code)",
}


def error_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    """OpenAPI `responses` entries for the error statuses a route can answer with."""
    return {s: {"description": _ERROR_TEXT[s], "content": {"application/json": {"model": ErrorBody}}} for s in statuses}


def responses(ok: int, *errors: int) -> dict[int, dict[str, Any]]:
    """A route's OpenAPI `responses`: its success status (schema from the return annotation; powertools leaves it out
    once `responses` is given) and its error statuses. 422 is always listed: powertools documents it for every
    validated route, and this replaces its schema with ErrorBody."""
    return {ok: {"description": "Created" if ok == 201 else "OK"}} | error_responses(*sorted(set(errors) | {422}))


# -- public views of the domain models ----------------------------------------------------------------
def _public_view(model: type[Job] | type[Dataset], name: str) -> type[BaseModel]:
    """The model without its PRIVATE_FIELDS (exactly what `public()` returns), so the schema cannot drift from the responses."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in model.model_fields.items() if n not in model.PRIVATE_FIELDS}
    return create_model(name, __base__=DomainModel, __doc__=model.__doc__, **fields)


JobView = _public_view(Job, "Job")
DatasetView = _public_view(Dataset, "Dataset")


class JobList(DomainModel):
    items: list[JobView]  # type: ignore[valid-type]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")


class DatasetList(DomainModel):
    items: list[DatasetView]  # type: ignore[valid-type]
    next_cursor: str | None


class UploadForm(DomainModel):
    """An S3 presigned POST: send `fields` plus the file (field name `file`, last) as multipart/form-data to `url`."""

    url: str
    fields: dict[str, str]
    expires_at: datetime


class PresignedLink(DomainModel):
    url: str
    expires_at: datetime


class CreatedDataset(DatasetView):  # type: ignore[misc,valid-type]
    upload: UploadForm = Field(description="Upload dataset.zip here (one key, bounded size, short expiry); validation starts on upload")


class DatasetDetail(DatasetView):  # type: ignore[misc,valid-type]
    manifest: PresignedLink | None = Field(default=None, description="The full manifest (every accepted and rejected item), once validated")


class EventList(DomainModel):
    items: list[JobEvent]
    next_cursor: str | None = Field(description="Pass as ?after= for the next page; null when there is nothing more now")


class MetricItem(DomainModel):
    step: int
    loss: float | None
    lr: float | None


class MetricList(DomainModel):
    items: list[MetricItem]


class WebhookSecret(DomainModel):
    secret: str = Field(description="whsec_…: verify the webhook-signature header of loraforge's job webhooks with it")
