"""Why a worker run failed: one exception type carrying the contract's error code.

Its kind (`user` / `system`, DESIGN §4) comes from `loraforge.contract.ERROR_KINDS`, the one
classification the control plane applies too: a code never changes kind with the situation.
"""

from __future__ import annotations

from loraforge.contract import WorkerErrorCode, error_kind, worker_error
from loraforge.models.errors import ErrorKind, JobError


class WorkerFailure(Exception):
    """A classified failure of one run. The pipeline turns it into a failed WorkerResult."""

    def __init__(self, code: WorkerErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    @property
    def kind(self) -> ErrorKind:
        return error_kind(self.code)

    def to_job_error(self) -> JobError:
        return worker_error(self.code, self.message)
