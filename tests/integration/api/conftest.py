"""The API function against moto: `api` sends API Gateway v2 events through the real lambda_handler and seeds the table."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from loraforge.dal.jobs_table import JobsTable
from loraforge.models import Artifact, ArtifactKind, Dataset, DatasetStats, Hyperparameters, Job, MetricPoint, new_id, utcnow
from loraforge.models.dataset import DatasetError, DatasetKind, RejectedItem
from loraforge.models.status import DatasetStatus, JobStatus
from loraforge.settings import reset_settings
from tests.support.apigw import OWNER_A, ApiResponse, call_api

ENDPOINTS = {"24gb": "ep-24gb-test", "cpu": "ep-cpu-test"}
PRICES = {"24gb": 0.00031, "cpu": 0.0}
PUBLIC_WEBHOOK = "https://93.184.216.34/hooks/loraforge"  # a public literal address: no DNS lookup in tests


def job_body(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "preset": "sdxl", "trigger_word": "mychar", "hyperparameters": {"steps": 500}} | overrides


@dataclass
class Api:
    context: Any

    def call(self, method: str, path: str, **kwargs: Any) -> ApiResponse:
        return call_api(self.context, method, path, **kwargs)

    @property
    def table(self) -> JobsTable:
        return JobsTable()

    def dataset(self, owner: str = OWNER_A, *, status: DatasetStatus = DatasetStatus.READY, images: int = 12,
                min_side: int = 1024, kind: DatasetKind = DatasetKind.IMAGES) -> Dataset:
        now = utcnow()
        dataset_id = new_id("ds")
        dataset = Dataset(
            id=dataset_id, owner=owner, name="mychar", kind=kind, status=status, created_at=now, updated_at=now,
            archive_key=f"datasets/{owner}/{dataset_id}/dataset.zip",
            manifest_key=f"datasets/{owner}/{dataset_id}/manifest.json" if status in (DatasetStatus.READY, DatasetStatus.INVALID) else None,
            stats=DatasetStats(images=images, rejected=1, total_bytes=images * 100_000, min_side=min_side, max_side=2048, captioned=images),
            rejected_sample=[RejectedItem(key="notes.pdf", reason="NOT_AN_IMAGE", message="not an image file")],
            errors=[DatasetError(code="TOO_FEW_IMAGES", message="no usable image")] if status == DatasetStatus.INVALID else [],
        )
        return self.table.create_dataset(dataset)

    def job(self, owner: str = OWNER_A, *, status: JobStatus = JobStatus.QUEUED, dataset_id: str | None = None) -> Job:
        """A job written directly in any status (the API can only create queued ones)."""
        now = utcnow()
        job = Job(
            id=new_id("job"), owner=owner, status=status, preset="sdxl", dataset_id=dataset_id or new_id("ds"),
            hyperparameters=Hyperparameters(steps=500, learning_rate=1e-4, rank=16, alpha=16, batch_size=1, resolution=1024,
                                            optimizer="adamw8bit"),
            gpu_class="24gb", created_at=now, updated_at=now,
            finished_at=now if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED) else None,
        )
        return self.table.create_job(job)

    def artifacts(self, job: Job, kinds: Iterable[ArtifactKind] = (ArtifactKind.CHECKPOINT, ArtifactKind.FINAL)) -> list[Artifact]:
        made = []
        for step, kind in enumerate(kinds, start=1):
            name = f"{kind}-{step * 100:06d}.safetensors"
            folder = "final" if kind == ArtifactKind.FINAL else "checkpoints"
            artifact = Artifact(kind=kind, step=step * 100, key=f"jobs/{job.owner}/{job.id}/{folder}/{name}", size=1234,
                                sha256="ab" * 32, name=name)
            self.table.put_artifact(job.id, artifact)
            made.append(artifact)
        return made

    def metrics(self, job: Job, steps: int = 5) -> None:
        self.table.put_metrics(job.id, [MetricPoint(step=s, loss=1.0 / s, lr=1e-4) for s in range(1, steps + 1)])


@pytest.fixture
def api(aws_stack: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> Api:
    # The template's default RunPodEndpoints has no endpoint ids: a deployment fills them in, so do the tests.
    monkeypatch.setenv("RUNPOD_ENDPOINTS", json.dumps(ENDPOINTS))
    monkeypatch.setenv("GPU_PRICES", json.dumps(PRICES))
    reset_settings()
    return Api(context=lambda_context)
