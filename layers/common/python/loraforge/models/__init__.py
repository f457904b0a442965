"""Domain models: pydantic v2, no I/O."""

from .artifact import Artifact, ArtifactKind, ArtifactLink
from .common import iso, new_id, utcnow
from .dataset import (
    Dataset,
    DatasetError,
    DatasetKind,
    DatasetManifest,
    DatasetStats,
    ManifestItem,
    RejectedItem,
)
from .errors import (
    Conflict,
    ErrorKind,
    InvalidInput,
    InvalidTransition,
    JobError,
    LoraforgeError,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
)
from .event import EventType, JobEvent, MetricPoint
from .job import (
    CheckpointOptions,
    Cost,
    Estimate,
    HyperparameterOverrides,
    Hyperparameters,
    Job,
    JobResult,
    JobSource,
    LrScheduler,
    NotifyOptions,
    Optimizer,
    Progress,
    SampleOptions,
)
from .status import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    DatasetStatus,
    JobStatus,
    can_transition,
    check_transition,
    holds_capacity,
    is_terminal,
)

__all__ = [
    "ACTIVE", "TERMINAL", "TRANSITIONS", "Artifact", "ArtifactKind", "ArtifactLink", "CheckpointOptions",
    "Conflict", "Cost", "Dataset", "DatasetError", "DatasetKind", "DatasetManifest", "DatasetStats",
    "DatasetStatus", "ErrorKind", "Estimate", "EventType", "HyperparameterOverrides", "Hyperparameters",
    "InvalidInput", "InvalidTransition", "Job", "JobError", "JobEvent", "JobResult", "JobSource", "JobStatus",
    "LoraforgeError", "LrScheduler", "ManifestItem", "MetricPoint", "NotFound", "NotifyOptions", "Optimizer",
    "PayloadTooLarge", "Progress", "RejectedItem", "SampleOptions", "TooManyRequests", "Unauthorized",
    "can_transition", "check_transition", "holds_capacity", "is_terminal", "iso", "new_id", "utcnow",
]
