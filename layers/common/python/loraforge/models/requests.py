"""Request bodies shared by the HTTP API and drop-to-train (`loraforge.yaml` is a CreateJobRequest
without dataset_id): one model, so both validate the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints

from .base import DomainModel
from .dataset import DatasetKind, DatasetName
from .job import CheckpointOptions, HyperparameterOverrides, NotifyOptions, SampleOptions, TriggerWord

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
JobName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class JobOptions(DomainModel):
    """Everything about a job except which dataset it trains on."""

    model_config = ConfigDict(extra="forbid")

    preset: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(description="Preset id (GET /v1/presets)")
    name: JobName | None = None
    trigger_word: TriggerWord | None = Field(default=None, description="Replaces [trigger] in captions and prompts")
    hyperparameters: HyperparameterOverrides = Field(default_factory=HyperparameterOverrides)
    samples: SampleOptions = Field(default_factory=SampleOptions)
    checkpoints: CheckpointOptions = Field(default_factory=CheckpointOptions)
    notify: NotifyOptions = Field(default_factory=NotifyOptions)
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=16)


class CreateJobRequest(JobOptions):
    dataset_id: Annotated[str, StringConstraints(pattern=r"^ds_[0-9a-z]{20}$")]


class DropConfig(JobOptions):
    """`loraforge.yaml` in a drop-to-train upload. Every field optional but the preset has a default."""

    preset: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "tiny-sd"


class CreateDatasetRequest(DomainModel):
    model_config = ConfigDict(extra="forbid")

    name: DatasetName
    kind: DatasetKind = DatasetKind.IMAGES


class CancelRequest(DomainModel):
    model_config = ConfigDict(extra="forbid")

    keep_latest: bool = Field(default=False, description="Make the newest stored checkpoint the result")
