"""The job resource and its parts (DESIGN §4, §6)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import ConfigDict, Field, StringConstraints

from .artifact import Artifact
from .base import DomainModel
from .errors import JobError
from .status import JobStatus

TriggerWord = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\s\[\]]+( [^\s\[\]]+)*$")]
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class Optimizer(StrEnum):
    ADAMW = "adamw"
    ADAMW8BIT = "adamw8bit"
    PRODIGY = "prodigy"
    ADAFACTOR = "adafactor"


class LrScheduler(StrEnum):
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    COSINE = "cosine"
    LINEAR = "linear"


class Hyperparameters(DomainModel):
    """Resolved training knobs. Absolute sanity bounds here; per-preset bounds in presets.yaml."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, le=100_000, description="Optimizer steps")
    learning_rate: float = Field(gt=0, le=1.0)
    rank: int = Field(ge=1, le=256, description="LoRA rank (network.linear)")
    alpha: int = Field(ge=1, le=256, description="LoRA alpha (network.linear_alpha)")
    batch_size: int = Field(ge=1, le=64)
    resolution: int = Field(ge=32, le=2048, description="Longest training side in pixels (buckets up to it)")
    optimizer: Optimizer
    lr_scheduler: LrScheduler = LrScheduler.CONSTANT
    gradient_accumulation: int = Field(default=1, ge=1, le=64)
    caption_dropout_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    seed: int = Field(default=42, ge=0, le=2**31 - 1)


class HyperparameterOverrides(DomainModel):
    """Any subset of Hyperparameters supplied by a user; the rest comes from the preset."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1, le=100_000)
    learning_rate: float | None = Field(default=None, gt=0, le=1.0)
    rank: int | None = Field(default=None, ge=1, le=256)
    alpha: int | None = Field(default=None, ge=1, le=256)
    batch_size: int | None = Field(default=None, ge=1, le=64)
    resolution: int | None = Field(default=None, ge=32, le=2048)
    optimizer: Optimizer | None = None
    lr_scheduler: LrScheduler | None = None
    gradient_accumulation: int | None = Field(default=None, ge=1, le=64)
    caption_dropout_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class SampleOptions(DomainModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[Prompt] = Field(default_factory=list, max_length=8)
    every: int | None = Field(default=None, ge=1, le=100_000, description="Steps between samples; default = checkpoints.every")


class CheckpointOptions(DomainModel):
    model_config = ConfigDict(extra="forbid")

    every: int | None = Field(default=None, ge=1, le=100_000, description="Steps between checkpoints; default from the preset")
    keep: int = Field(default=4, ge=1, le=50, description="How many step checkpoints to keep in S3")


class NotifyOptions(DomainModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")] | None = None
    on_running: bool = Field(default=False, description="Also notify when training starts")


class Progress(DomainModel):
    step: int = 0
    total_steps: int = 0
    percent: float = 0.0
    loss: float | None = None
    eta_seconds: float | None = None


class Cost(DomainModel):
    estimated_usd: float | None = None
    actual_usd: float | None = None
    billed_seconds: float | None = None


class Estimate(DomainModel):
    seconds: float = Field(description="Expected training wall time including model load")
    cost_usd: float
    vram_gb: int
    gpu_class: str
    gpu_price_per_second: float
    warnings: list[str] = Field(default_factory=list)


class ResultFile(Artifact):
    """One file of a job's resulting LoRA."""

    part: str | None = Field(
        default=None,
        description="Which expert the file holds when the LoRA is saved as one file per expert (Wan 2.2 14B: `high_noise`, "
        "`low_noise`; load both); null for a single-file LoRA",
    )


class ResumeReport(DomainModel):
    """Whether the trainer started where an attempt that resumes from a checkpoint asked it to."""

    requested_step: int = Field(ge=1, description="The step of the checkpoint the attempt resumed from")
    started_step: int = Field(ge=0, description="The step the trainer actually started training from (its own report and progress)")
    honoured: bool = Field(description="False when the trainer started elsewhere (0: it trained again from scratch): the steps "
                           "it reports, and the result, count from `started_step`")


class JobResult(DomainModel):
    lora: Artifact | None = Field(default=None, description="The LoRA file; for a LoRA in several files (see `files`) the first of them")
    files: list[ResultFile] = Field(
        default_factory=list,
        description="EVERY file of the LoRA, in name order: one for most models, one per expert for Wan 2.2 14B "
        "(`…_high_noise.safetensors` and `…_low_noise.safetensors`, both needed). Download them with "
        "`GET /v1/jobs/{id}/artifacts` (presigned URLs) or `loraforge jobs download`. Empty on jobs finished before this field.",
    )
    steps: int | None = None
    final_loss: float | None = None
    resume: ResumeReport | None = Field(
        default=None, description="Set when the attempt that produced the result resumed from a checkpoint: where the trainer really started"
    )


class JobSource(StrEnum):
    API = "api"
    DROP = "drop"
    RETRY = "retry"


class Job(DomainModel):
    """A training job as the API shows it (DESIGN §6) plus its control-plane fields."""

    id: str
    owner: str
    status: JobStatus
    name: str | None = None
    preset: str
    dataset_id: str
    trigger_word: str | None = None
    hyperparameters: Hyperparameters
    samples: SampleOptions = Field(default_factory=SampleOptions)
    checkpoints: CheckpointOptions = Field(default_factory=CheckpointOptions)
    notify: NotifyOptions = Field(default_factory=NotifyOptions)
    metadata: dict[str, str] = Field(default_factory=dict)
    source: JobSource = JobSource.API
    progress: Progress = Field(default_factory=Progress)
    cost: Cost = Field(default_factory=Cost)
    estimate: Estimate | None = None
    attempts: int = Field(default=1, description="Attempt number of the current run (1 = first)")
    retry_of: str | None = Field(default=None, description="The job this one retries, for a manual retry")
    retried_by: str | None = Field(default=None, description="The job created by retrying this one")
    resume_from: Artifact | None = Field(default=None, description="Checkpoint the current attempt starts from")
    resume_optimizer: Artifact | None = Field(default=None, description="Optimizer state stored with that checkpoint, if any")
    resume_files: list[Artifact] = Field(
        default_factory=list,
        description="Every file of that checkpoint (Wan 2.2 14B: one per expert; resume_from is the first). Empty on jobs "
        "written before this field: resume_from alone is then the checkpoint.",
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = Field(default=None, description="When the first attempt's worker started")
    finished_at: datetime | None = None
    attempt_started_at: datetime | None = Field(
        default=None, description="When the current attempt's worker started (its first event); null until it has, and again when "
        "an automatic retry queues a new attempt")
    run_seconds: float | None = Field(
        default=None, description="Worker run time loraforge measured over this job's attempts that have ended: each one's worker "
        "start to the end of its run, summed (queue waits between attempts not counted). RunPod bills more: `cost.billed_seconds` "
        "adds queueing and cold start. Null when no attempt's worker started")
    error: JobError | None = None
    result: JobResult | None = None
    # control-plane fields (not secret, but not needed by most clients)
    version: int = 0
    runpod_job_id: str | None = None
    endpoint_id: str | None = None
    gpu_class: str | None = None
    dispatch_attempts: int = 0
    next_attempt_at: datetime | None = None
    cancel_requested: bool = False
    keep_latest: bool = False
    last_event_at: datetime | None = None
    worker_seq: int = Field(default=0, description="Highest worker event sequence applied for this attempt")
    dispatch_token: str | None = Field(default=None, description="Nonce of the current dispatch; the worker's `started` event echoes it")
    dispatched_at: datetime | None = Field(default=None, description="When the current dispatch claimed the job (a /run may exist from then on)")
    auto_retries: int = Field(default=0, description="Automatic retries of system failures used by this job")
    billed_runs: list[str] = Field(default_factory=list, description="RunPod job ids whose cost is included in cost.actual_usd")

    PRIVATE_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "version", "dispatch_attempts", "next_attempt_at", "worker_seq", "endpoint_id", "cancel_requested",
        "dispatch_token", "dispatched_at", "auto_retries", "billed_runs",
    })
    """Control-plane fields the API never shows (the dispatch token would let anyone race the worker's first event)."""

    def public(self) -> dict[str, Any]:
        """The resource as the API returns it."""
        return self.model_dump(mode="json", exclude=set(self.PRIVATE_FIELDS))
