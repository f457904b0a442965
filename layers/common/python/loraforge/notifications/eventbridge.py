"""EventBridge events for other AWS systems: `loraforge` / `Training Job State Change` and `Dataset Validation Result`.

The detail is a summary that a rule can match on (status, previous_status, owner, preset) and a
target can act on (result keys, error, cost) without calling the API.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from ..dal.clients import client
from ..dal.keys import job_prefix
from ..models.dataset import Dataset
from ..models.job import Job
from ..models.status import DatasetStatus, JobStatus
from ..settings import get_settings
from .cost_statement import CostStatement, cost_statement

SOURCE = "loraforge"
JOB_STATE_CHANGE = "Training Job State Change"
DATASET_VALIDATION_RESULT = "Dataset Validation Result"


class EventDeliveryError(Exception):
    """PutEvents accepted the call but refused the entry (throttled, too large…): the stream record is retried."""


class BusEvent(BaseModel):
    detail_type: str
    detail: dict[str, Any]
    time: datetime | None = Field(default=None, description="When the change happened (the item's updated_at)")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def job_detail(job: Job, previous_status: JobStatus | None, *, bucket: str, cost: CostStatement | None = None) -> dict[str, Any]:
    """The job summary carried by `Training Job State Change`.

    `cost`: the statement the email and webhook of the same change carry (default: from the job alone); `detail.cost`
    is the job's cost plus `billing`, `measured_seconds` and `measured_usd` (notifications/cost_statement.py).
    """
    result = None
    if job.result is not None:
        result = {
            "lora_key": job.result.lora.key if job.result.lora else None,
            "lora_sha256": job.result.lora.sha256 if job.result.lora else None,
            "lora_size": job.result.lora.size if job.result.lora else None,
            # every file of the LoRA (Wan 2.2 14B: one per expert; the lora_* fields above are the first)
            "lora_files": [{"key": f.key, "sha256": f.sha256, "size": f.size, "part": f.part} for f in job.result.files],
            "steps": job.result.steps,
            "final_loss": job.result.final_loss,
        }
    return {
        "id": job.id,
        "owner": job.owner,
        "name": job.name,
        "status": str(job.status),
        "previous_status": str(previous_status) if previous_status else None,
        "preset": job.preset,
        "dataset_id": job.dataset_id,
        "attempt": job.attempts,
        "source": str(job.source),
        "progress": job.progress.model_dump(mode="json"),
        "cost": (cost or cost_statement(job)).payload(),
        "error": job.error.model_dump(mode="json") if job.error else None,
        "result": result,
        "bucket": bucket,
        "artifacts_prefix": job_prefix(job.owner, job.id),
        "metadata": job.metadata,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def dataset_detail(dataset: Dataset, previous_status: DatasetStatus | None) -> dict[str, Any]:
    """The dataset summary carried by `Dataset Validation Result`."""
    return {
        "id": dataset.id,
        "owner": dataset.owner,
        "name": dataset.name,
        "status": str(dataset.status),
        "previous_status": str(previous_status) if previous_status else None,
        "kind": str(dataset.kind),
        "stats": dataset.stats.model_dump(mode="json"),
        "errors": [e.model_dump(mode="json") for e in dataset.errors],
        "warnings": dataset.warnings,
        "rejected_sample": [r.model_dump(mode="json") for r in dataset.rejected_sample],
        "archive_key": dataset.archive_key,
        "manifest_key": dataset.manifest_key,
        "job_id": dataset.job_id,
        "created_at": _iso(dataset.created_at),
        "updated_at": _iso(dataset.updated_at),
    }


class EventPublisher:
    def __init__(self, bus_name: str | None = None) -> None:
        self.bus_name = bus_name or get_settings().event_bus_name

    def put(self, event: BusEvent) -> str:
        """1 PutEvents; returns the EventBridge event id. Raises EventDeliveryError when the entry was refused."""
        entry: dict[str, Any] = {"Source": SOURCE, "DetailType": event.detail_type, "Detail": json.dumps(event.detail),
                                 "EventBusName": self.bus_name}
        if event.time is not None:
            entry["Time"] = event.time
        resp = client("events").put_events(Entries=[entry])
        result = resp["Entries"][0]
        if resp.get("FailedEntryCount") or "EventId" not in result:
            raise EventDeliveryError(f"{result.get('ErrorCode', 'Unknown')}: {result.get('ErrorMessage', 'entry refused')}")
        return str(result["EventId"])
