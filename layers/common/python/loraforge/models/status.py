"""Job and dataset statuses, and THE transition table: the only place a status change is defined.

The DAL enforces it with conditional writes (status = :from AND version = :v), so no code path
can move a job outside this table, and a terminal state never changes again.
"""

from __future__ import annotations

from enum import StrEnum

from .errors import InvalidTransition


class JobStatus(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = JobStatus

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # queued -> failed: dispatch gave up (RunPod unavailable N times, no endpoint for the GPU class).
    S.QUEUED: frozenset({S.STARTING, S.CANCELLED, S.FAILED}),
    # starting -> queued: RunPod refused /run; the slot is released and the job waits for a retry.
    # starting -> succeeded|failed: the completion webhook may beat every worker event.
    S.STARTING: frozenset({S.RUNNING, S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLING}),
    # running -> queued: automatic retry of a system failure (new attempt, resumes from a checkpoint).
    S.RUNNING: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED, S.CANCELLING}),
    # cancelling -> succeeded|failed: the job finished before the cancel reached it; first terminal wins.
    S.CANCELLING: frozenset({S.CANCELLED, S.SUCCEEDED, S.FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}

TERMINAL: frozenset[JobStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
ACTIVE: frozenset[JobStatus] = frozenset({S.STARTING, S.RUNNING, S.CANCELLING})
"""Statuses that hold a capacity slot (global and per owner)."""


def is_terminal(status: JobStatus) -> bool:
    return status in TERMINAL


def holds_capacity(status: JobStatus) -> bool:
    return status in ACTIVE


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if not can_transition(current, target):
        raise InvalidTransition(
            f"a job in '{current}' cannot become '{target}'",
            details={"from": str(current), "to": str(target), "allowed": sorted(map(str, TRANSITIONS[current]))},
        )


class DatasetStatus(StrEnum):
    AWAITING_UPLOAD = "awaiting_upload"
    VALIDATING = "validating"
    READY = "ready"
    INVALID = "invalid"


DATASET_TRANSITIONS: dict[DatasetStatus, frozenset[DatasetStatus]] = {
    DatasetStatus.AWAITING_UPLOAD: frozenset({DatasetStatus.VALIDATING, DatasetStatus.INVALID}),
    # validating -> validating: a re-upload of the archive (new object version) validates again.
    DatasetStatus.VALIDATING: frozenset({DatasetStatus.READY, DatasetStatus.INVALID}),
    DatasetStatus.READY: frozenset(),
    DatasetStatus.INVALID: frozenset(),
}
