"""Job events: what happened, in order (control plane and worker)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from .base import DomainModel


class EventType(StrEnum):
    CREATED = "created"
    DISPATCHED = "dispatched"
    DISPATCH_FAILED = "dispatch_failed"
    STARTED = "started"
    PROGRESS = "progress"
    CHECKPOINT = "checkpoint"
    SAMPLE = "sample"
    LOG = "log"
    STATUS = "status"
    CANCEL_REQUESTED = "cancel_requested"
    RETRY_SCHEDULED = "retry_scheduled"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobEvent(DomainModel):
    seq: int = Field(ge=1, description="Per-job sequence; strictly increasing, may have gaps")
    type: EventType
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class MetricPoint(DomainModel):
    step: int = Field(ge=0)
    loss: float | None = None
    lr: float | None = None
    at: datetime | None = None
