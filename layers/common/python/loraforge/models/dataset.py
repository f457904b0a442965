"""Datasets and their manifest (DESIGN §4)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import Field, StringConstraints

from .base import DomainModel
from .status import DatasetStatus


class DatasetKind(StrEnum):
    IMAGES = "images"
    VIDEO = "video"


DatasetName = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")]


class ManifestItem(DomainModel):
    key: str = Field(description="Path of the file inside dataset.zip")
    size: int
    sha256: str
    width: int
    height: int
    caption: str
    caption_source: str = Field(default="file", description="file | default")
    notes: list[str] = Field(default_factory=list, description="e.g. CMYK_CONVERTED, BELOW_RECOMMENDED_RESOLUTION")


class RejectedItem(DomainModel):
    key: str
    reason: str = Field(description="Stable reason code, e.g. PATH_TRAVERSAL, NOT_AN_IMAGE, DUPLICATE_IMAGE")
    message: str


class DatasetStats(DomainModel):
    images: int = 0
    rejected: int = 0
    total_bytes: int = 0
    min_side: int | None = None
    max_side: int | None = None
    captioned: int = 0


class DatasetManifest(DomainModel):
    dataset_id: str
    archive_key: str
    archive_sha256: str | None = None
    archive_size: int | None = None
    accepted: list[ManifestItem] = Field(default_factory=list)
    rejected: list[RejectedItem] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list, description="Reason codes that made the dataset invalid")


class DatasetError(DomainModel):
    code: str
    message: str


class Dataset(DomainModel):
    id: str
    owner: str
    name: str
    kind: DatasetKind = DatasetKind.IMAGES
    status: DatasetStatus
    created_at: datetime
    updated_at: datetime
    archive_key: str
    manifest_key: str | None = None
    archive_sha256: str | None = None
    archive_size: int | None = None
    source_key: str | None = Field(default=None, description="incoming/… key for drop-to-train datasets")
    stats: DatasetStats = Field(default_factory=DatasetStats)
    warnings: list[str] = Field(default_factory=list)
    errors: list[DatasetError] = Field(default_factory=list)
    rejected_sample: list[RejectedItem] = Field(default_factory=list, description="First rejected items (the manifest has all)")
    job_id: str | None = Field(default=None, description="The job created by drop-to-train, if any")
    version: int = 0

    PRIVATE_FIELDS: ClassVar[frozenset[str]] = frozenset({"version"})

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(self.PRIVATE_FIELDS))
