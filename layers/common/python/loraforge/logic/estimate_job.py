"""`POST /v1/estimates`: the dry run of a job body, and the checks job creation shares with it.

`plan_job` is THE validation of a job request against its preset and this deployment: the preset
exists, the hyperparameters are within its bounds, its GPU class has a RunPod endpoint here, the
webhook URL is a safe public https target. `create_job` runs it too, so an estimate that succeeds
means the same body would be accepted (dataset readiness aside).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import Field, StringConstraints, model_validator

from ..dal.jobs_table import JobsTable
from ..models.dataset import Dataset
from ..models.errors import Conflict, InvalidInput
from ..models.job import Estimate, Hyperparameters
from ..models.requests import JobOptions
from ..models.status import DatasetStatus
from ..notifications.url_safety import check_webhook_url
from ..observability import logger, metrics
from ..presets import Preset, get_preset, resolve_hyperparameters
from ..settings import get_settings

DatasetId = Annotated[str, StringConstraints(pattern=r"^ds_[0-9a-z]{20}$")]


class EstimateRequest(JobOptions):
    """A job body whose dataset is optional: with `dataset_id` its stats feed the warnings,
    without it `image_count` (if given) stands in for the number of images."""

    dataset_id: DatasetId | None = Field(default=None, description="A ready dataset of yours; its stats feed the warnings")
    image_count: int | None = Field(default=None, ge=1, le=100_000, description="Images you plan to train on (when there is no dataset_id)")

    @model_validator(mode="after")
    def _one_source_of_images(self) -> EstimateRequest:
        if self.dataset_id is not None and self.image_count is not None:
            raise ValueError("give dataset_id or image_count, not both: a dataset's own image count is used")
        return self


class EstimateResult(Estimate):
    """The estimate (the same fields a job's `estimate` carries) and what it was computed for."""

    preset: str
    gpu_name: str = Field(description="The GPU the preset is sized for")
    dataset_id: str | None = None
    image_count: int | None = Field(default=None, description="The number of images the warnings assume (null: unknown)")
    hyperparameters: Hyperparameters = Field(description="Resolved: the preset's defaults with your overrides")


@dataclass(frozen=True)
class JobPlan:
    preset: Preset
    hyperparameters: Hyperparameters
    estimate: Estimate
    endpoint_id: str


def endpoint_for(gpu_class: str) -> str | None:
    """The RunPod endpoint configured for a GPU class; an empty value (the template default) means none."""
    return get_settings().runpod_endpoints.get(gpu_class) or None


def plan_job(options: JobOptions, *, dataset: Dataset | None, image_count: int | None = None) -> JobPlan:
    """Validate `options` for this deployment and estimate the job. Raises InvalidInput (422) with a stable code."""
    settings = get_settings()
    preset = get_preset(options.preset)
    hyperparameters = resolve_hyperparameters(preset, options.hyperparameters)
    endpoint_id = endpoint_for(preset.gpu_class)
    if endpoint_id is None:
        configured = sorted(k for k, v in settings.runpod_endpoints.items() if v)
        raise InvalidInput(
            f"preset '{preset.id}' runs on GPU class '{preset.gpu_class}', and this deployment has no RunPod endpoint for it: "
            f"set \"{preset.gpu_class}\" to an endpoint id in the RunPodEndpoints template parameter, or choose a preset "
            f"of a configured class ({', '.join(configured) or 'none configured'})",
            code="NO_ENDPOINT_FOR_GPU_CLASS",
            details={"gpu_class": preset.gpu_class, "configured_gpu_classes": configured},
        )
    if options.notify.webhook_url is not None:
        check_webhook_url(options.notify.webhook_url)
    price = settings.gpu_prices.get(preset.gpu_class)
    from ..presets import cost_model  # the estimate model is only needed here, not on every route's import

    estimate = cost_model.estimate(
        preset,
        hyperparameters,
        image_count=dataset.stats.images if dataset else image_count,
        min_image_side=dataset.stats.min_side if dataset else None,
        gpu_price_per_second=price or 0.0,
        gpu_class=preset.gpu_class,
    )
    if price is None:
        estimate.warnings.append(
            f"NO_GPU_PRICE: no price is configured for GPU class '{preset.gpu_class}' (GpuPrices template parameter), "
            "so the cost shows as 0"
        )
    return JobPlan(preset=preset, hyperparameters=hyperparameters, estimate=estimate, endpoint_id=endpoint_id)


_NEXT_STEP = {
    DatasetStatus.AWAITING_UPLOAD: "upload dataset.zip with the presigned POST returned by POST /v1/datasets, then wait for validation",
    DatasetStatus.VALIDATING: "wait until validation finishes (GET /v1/datasets/{id} shows status ready)",
    DatasetStatus.INVALID: "fix the problems listed in the dataset's errors and upload a new dataset",
}


def ready_dataset(owner: str, dataset_id: str) -> Dataset:
    """The owner's dataset, which must be validated: 404 DATASET_NOT_FOUND, 409 DATASET_NOT_READY."""
    dataset = JobsTable().get_dataset_for_owner(dataset_id, owner)
    if dataset.status != DatasetStatus.READY:
        raise Conflict(
            f"dataset {dataset.id} is '{dataset.status}', not ready: {_NEXT_STEP[dataset.status].replace('{id}', dataset.id)}",
            code="DATASET_NOT_READY",
            details={"status": str(dataset.status), "errors": [e.model_dump(mode="json") for e in dataset.errors]},
        )
    return dataset


def estimate_job(owner: str, request: EstimateRequest) -> EstimateResult:
    """Dry run: the same checks as job creation, nothing written."""
    dataset = ready_dataset(owner, request.dataset_id) if request.dataset_id else None
    plan = plan_job(request, dataset=dataset, image_count=request.image_count)
    metrics.add_metric(name="EstimateRequested", unit=MetricUnit.Count, value=1)
    logger.info("estimate computed", extra={"preset": plan.preset.id, "seconds": plan.estimate.seconds, "cost_usd": plan.estimate.cost_usd})
    return EstimateResult(
        **plan.estimate.model_dump(),
        preset=plan.preset.id,
        gpu_name=plan.preset.recommended_gpu,
        dataset_id=dataset.id if dataset else None,
        image_count=dataset.stats.images if dataset else request.image_count,
        hyperparameters=plan.hyperparameters,
    )
