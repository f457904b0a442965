"""The worker contract (DESIGN §7): RunPod job input, signed progress events, result manifest.

Installed in the worker image too, so it imports only pydantic and loraforge.models.
The RunPod webhook echoes `input` back and RunPod's dashboard shows it: nothing here is a
long-lived credential. The callback secret is derived per job and only lets its holder post
events for that one job; presigned URLs are short-lived and prefix-scoped.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .models.artifact import Artifact
from .models.base import DomainModel
from .models.errors import ErrorKind, JobError
from .models.job import CheckpointOptions, Hyperparameters, ResumeReport, SampleOptions

CONTRACT_VERSION = 2
"""2: `resume.files` carries every file of the checkpoint (1 had one `checkpoint_url`; such inputs still parse)."""


class Engine(StrEnum):
    AI_TOOLKIT = "ai-toolkit"
    DIFFUSERS = "diffusers"
    TRL_SFT = "trl-sft"


class TrainingSpec(DomainModel):
    """Everything an engine needs to build its config: the preset's model facts + resolved knobs."""

    model_config = ConfigDict(extra="forbid")

    preset: str
    family: str
    arch: str | None = Field(default=None, description="AI-Toolkit model.arch")
    base_model: str = Field(description="HF id or local path of the base model")
    assistant_lora_path: str | None = None
    modality: Literal["image", "video", "text"] = "image"
    noise_scheduler: str = "ddpm"
    quantize: bool = False
    low_vram: bool = False
    hyperparameters: Hyperparameters
    trigger_word: str | None = None
    default_caption: str | None = Field(default=None, description="Caption for images without a .txt")
    samples: SampleOptions = Field(default_factory=SampleOptions)
    checkpoints: CheckpointOptions = Field(default_factory=CheckpointOptions)
    checkpoint_every: int = Field(ge=1, description="Resolved save_every")
    sample_every: int = Field(ge=1, description="Resolved sample_every")
    sample_settings: dict[str, Any] = Field(default_factory=dict, description="guidance_scale, sample_steps, width, height, sampler…")
    engine_options: dict[str, Any] = Field(default_factory=dict, description="Arch-specific engine keys from the preset")


class DatasetSource(DomainModel):
    url: str = Field(description="Presigned GET of dataset.zip")
    sha256: str | None = None
    size: int | None = None
    max_bytes: int = Field(default=2 * 1024**3)
    manifest_url: str | None = Field(
        default=None,
        description="Presigned GET of the dataset's manifest.json (models.DatasetManifest, written by ingest). When given, the "
        "worker trains on exactly its accepted items (each checked against its sha256) with its captions; without it "
        "(inputs from before manifests) the worker re-applies the archive and caption rules itself.",
    )


class OutputTarget(DomainModel):
    """One presigned POST policy: key must start with `prefix`, size within the policy's range."""

    url: str
    fields: dict[str, str]
    prefix: str
    max_bytes: int


class Callback(DomainModel):
    url: str = Field(description="POST target for signed worker events (…/v1/hooks/worker/{job})")
    secret: str = Field(description="Per-job Standard Webhooks secret (whsec_…)")
    min_interval_seconds: float = Field(default=3.0, ge=0.0, description="Progress throttle")


CHECKPOINT_PARTS = ("_high_noise", "_low_noise")
"""Name suffixes of a checkpoint saved as one file per expert: Wan 2.2 14B writes `<name>_<step:09d>_high_noise.safetensors`
and `…_low_noise.safetensors` where other models write one `<name>_<step:09d>.safetensors`. Resuming needs every part:
AI-Toolkit, given either file, loads its sibling by swapping the suffix and silently skips a sibling that is not there."""


def checkpoint_part(name: str) -> str:
    """The expert part of a checkpoint file name (`_high_noise`, `_low_noise`), or "" for a single-file checkpoint."""
    stem = name.rsplit("/", 1)[-1].removesuffix(".safetensors")
    return next((part for part in CHECKPOINT_PARTS if stem.endswith(part)), "")


class CheckpointFile(DomainModel):
    """One file of a stored checkpoint (presigned GET) and what it must hash to."""

    url: str = Field(description="Presigned GET of the stored file")
    name: str = Field(pattern=r"^[^/\\]+$", max_length=255,
                      description="The name the engine saved it under; its part (`_high_noise`, `_low_noise` or none) says where it goes")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="Recorded at upload; the worker refuses other bytes")
    size: int | None = Field(default=None, ge=0)


class ResumeFrom(DomainModel):
    """The checkpoint an attempt starts from: EVERY file of one step (one for most models, one per expert for Wan 2.2 14B).

    `checkpoint_url`/`checkpoint_name`/`checkpoint_sha256` mirror `files[0]` for workers older than `files` (contract 1),
    which restore that one file; an input that has only them (queued under contract 1) is read as a one-file `files`.
    """

    step: int = Field(ge=1)
    files: list[CheckpointFile] = Field(min_length=1, max_length=len(CHECKPOINT_PARTS))
    optimizer_url: str | None = Field(default=None, description="Presigned GET of the optimizer state saved with this step")
    checkpoint_url: str | None = None
    checkpoint_name: str | None = None
    checkpoint_sha256: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _single_file_input(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("files") and data.get("checkpoint_url"):
            single = {"url": data["checkpoint_url"], "name": data.get("checkpoint_name"), "sha256": data.get("checkpoint_sha256")}
            return {**data, "files": [single]}
        return data

    @model_validator(mode="after")
    def _one_file_per_part(self) -> ResumeFrom:
        parts = [checkpoint_part(f.name) for f in self.files]
        if len(set(parts)) != len(parts) or (len(parts) > 1 and "" in parts):
            raise ValueError(f"resume files must be one single file or one file per part {list(CHECKPOINT_PARTS)}; "
                             f"got {[f.name for f in self.files]}")
        first = self.files[0]
        self.checkpoint_url, self.checkpoint_name, self.checkpoint_sha256 = first.url, first.name, first.sha256
        return self


class WorkerInput(DomainModel):
    model_config = ConfigDict(extra="forbid")

    contract_version: int = CONTRACT_VERSION
    job_id: str
    attempt: int = Field(ge=1)
    dispatch_token: str = Field(
        description="Nonce of this dispatch. The worker's first (`started`) event carries it with its RunPod job id; the API "
        "accepts one RunPod job per token and answers 409 to any other, so a duplicate run (a /run retried after an "
        "unknown outcome) stops before training."
    )
    engine: Engine
    spec: TrainingSpec
    dataset: DatasetSource
    output: OutputTarget
    callback: Callback | None = None
    resume: ResumeFrom | None = None
    time_limit_seconds: int = Field(ge=60, description="The worker stops (keeping the last checkpoint) before RunPod's executionTimeout")


class WorkerEventType(StrEnum):
    STARTED = "started"
    PROGRESS = "progress"
    CHECKPOINT = "checkpoint"
    SAMPLE = "sample"
    LOG = "log"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkerEvent(DomainModel):
    """Body of a signed POST to the callback URL. `seq` increases by 1 per event within an attempt."""

    job_id: str
    attempt: int
    runpod_job_id: str | None = Field(
        default=None, max_length=256,
        description="The RunPod job the sending worker runs (job['id']), on every event: the API ignores events of a run "
        "other than the job's recorded one (a refused duplicate run may still report). None from workers older than this field.",
    )
    seq: int = Field(ge=1)
    type: WorkerEventType
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


class StartedData(DomainModel):
    """`data` of the `started` event, the first one a worker sends (before downloading or training).

    The API accepts one RunPod job per `dispatch_token` (2xx) and answers 409 (`DUPLICATE_RUN`, or
    `JOB_CANCELLED` when the job is being cancelled) to any other: the worker then stops without
    training and returns a failed result with `WorkerErrorCode.DUPLICATE_RUN`.
    """

    dispatch_token: str = Field(min_length=1, max_length=128)
    runpod_job_id: str = Field(min_length=1, max_length=256, description="The RunPod job id the worker is running (job['id'])")


class ProgressData(DomainModel):
    step: int
    total_steps: int
    loss: float | None = None
    lr: float | None = None
    eta_seconds: float | None = None
    metrics: list[dict[str, Any]] = Field(default_factory=list, description="[{step, loss, lr}] since the last event")


RESUME_NOT_HONOURED = "RESUME_NOT_HONOURED"


class ResumeNotHonouredData(DomainModel):
    """`data` of the warning LOG event a worker sends when the engine did not continue from the checkpoint it was given:
    the steps from `actual_step` on are trained (and reported) again, so the job's progress goes back there."""

    code: Literal["RESUME_NOT_HONOURED"]
    expected_step: int = Field(ge=0)
    actual_step: int = Field(ge=0)


class Timings(DomainModel):
    download: float = 0.0
    prepare: float = 0.0
    train: float = 0.0
    upload: float = 0.0


class WorkerErrorCode(StrEnum):
    INVALID_INPUT = "INVALID_INPUT"
    DATASET_UNREADABLE = "DATASET_UNREADABLE"
    DATASET_DOWNLOAD_FAILED = "DATASET_DOWNLOAD_FAILED"
    DATASET_CHECKSUM_MISMATCH = "DATASET_CHECKSUM_MISMATCH"
    DATASET_UNSAFE = "DATASET_UNSAFE"
    RESUME_FAILED = "RESUME_FAILED"
    GPU_OOM = "GPU_OOM"
    ENGINE_CRASHED = "ENGINE_CRASHED"
    ENGINE_INCOMPLETE = "ENGINE_INCOMPLETE"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    UPLOAD_FAILED = "UPLOAD_FAILED"
    UNKNOWN_ENGINE = "UNKNOWN_ENGINE"
    DUPLICATE_RUN = "DUPLICATE_RUN"


ERROR_KINDS: dict[WorkerErrorCode, ErrorKind] = {
    # The input was at fault (DESIGN §4: never retried automatically).
    WorkerErrorCode.INVALID_INPUT: ErrorKind.USER,
    WorkerErrorCode.UNKNOWN_ENGINE: ErrorKind.USER,
    WorkerErrorCode.DATASET_UNREADABLE: ErrorKind.USER,
    WorkerErrorCode.DATASET_UNSAFE: ErrorKind.USER,
    WorkerErrorCode.GPU_OOM: ErrorKind.USER,
    WorkerErrorCode.CANCELLED: ErrorKind.USER,
    # Ours or the platform's: an automatic retry may succeed.
    WorkerErrorCode.DATASET_DOWNLOAD_FAILED: ErrorKind.SYSTEM,  # presigned URL expired, object gone, network
    # The checksums were computed at ingest: a mismatch means the stored object changed after validation or the
    # transfer was corrupted, not that the user sent something wrong.
    WorkerErrorCode.DATASET_CHECKSUM_MISMATCH: ErrorKind.SYSTEM,
    WorkerErrorCode.RESUME_FAILED: ErrorKind.SYSTEM,  # the stored checkpoint could not be fetched or is not the one recorded
    WorkerErrorCode.ENGINE_CRASHED: ErrorKind.SYSTEM,
    WorkerErrorCode.ENGINE_INCOMPLETE: ErrorKind.SYSTEM,
    WorkerErrorCode.TIMEOUT: ErrorKind.SYSTEM,
    WorkerErrorCode.UPLOAD_FAILED: ErrorKind.SYSTEM,
    WorkerErrorCode.DUPLICATE_RUN: ErrorKind.SYSTEM,
}
"""THE user-vs-system classification of worker failures: the worker and the control plane both read it.

The kind is a function of the code alone, because RunPod keeps only the `"<CODE>: <message>"` string of a
FAILED run (its SDK pops `error` from the returned dict): a code whose kind depended on the situation
would be classified differently by the worker's `failed` event and by RunPod's status.
"""

MAX_WORKER_ERROR_MESSAGE = 500
_WORKER_ERROR_CODES = frozenset(c.value for c in WorkerErrorCode)


def error_kind(code: str) -> ErrorKind:
    """The kind of a worker error code; an unknown code (a newer worker, a platform error) is ours: system."""
    try:
        return ERROR_KINDS[WorkerErrorCode(code)]
    except ValueError:
        return ErrorKind.SYSTEM


def worker_error(code: WorkerErrorCode, message: str) -> JobError:
    return JobError(code=code.value, message=message, kind=ERROR_KINDS[code])


def format_worker_error(error: JobError) -> str:
    """The top-level `error` string of a failed handler result: `"<CODE>: <message>"` (RunPod marks the job FAILED)."""
    return f"{error.code}: {error.message}"


def parse_worker_error(error: object) -> JobError | None:
    """The JobError of a `"<CODE>: <message>"` string written by `format_worker_error`; None for anything else
    (a platform error, a crash traceback, a code this contract does not know)."""
    if not isinstance(error, str) or ": " not in error:
        return None
    code, message = error.split(": ", 1)
    if code not in _WORKER_ERROR_CODES:
        return None
    return JobError(code=code, message=message[:MAX_WORKER_ERROR_MESSAGE], kind=error_kind(code))


class WorkerResult(DomainModel):
    """The small manifest the handler returns (never file contents: RunPod caps payloads)."""

    job_id: str
    attempt: int
    status: Literal["completed", "failed", "cancelled"]
    steps: int = 0
    total_steps: int = 0
    final_loss: float | None = None
    final: Artifact | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    error: JobError | None = None
    resume: ResumeReport | None = Field(
        default=None, description="With `resume` in the input, once training began: the step the engine really started from "
        "(`honoured` false: it did not continue from the checkpoint). None from workers older than this field."
    )
