"""Files a job produced, stored under jobs/<owner>/<job>/ in S3."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from .base import DomainModel


class ArtifactKind(StrEnum):
    CHECKPOINT = "checkpoint"
    SAMPLE = "sample"
    FINAL = "final"
    CONFIG = "config"
    LOG = "log"
    METRICS = "metrics"
    OPTIMIZER = "optimizer"


class Artifact(DomainModel):
    kind: ArtifactKind
    step: int = Field(ge=0, description="Training step the file belongs to (final: the last step)")
    key: str = Field(description="S3 key under jobs/<owner>/<job>/")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str | None = Field(default=None, description="File name (the last key segment)")
    created_at: datetime | None = None


class ArtifactLink(Artifact):
    """An artifact with a short-lived presigned GET URL (API responses)."""

    url: str
    expires_at: datetime
