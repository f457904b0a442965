"""Why a worker run failed: one exception type carrying the contract's error code and kind.

`kind` follows DESIGN §4: `user` means the input was at fault (bad dataset, out of memory for the
chosen settings) and is never retried automatically; `system` is ours or the platform's.
"""

from __future__ import annotations

from loraforge.contract import WorkerErrorCode
from loraforge.models.errors import ErrorKind, JobError

DEFAULT_KIND: dict[WorkerErrorCode, ErrorKind] = {
    WorkerErrorCode.INVALID_INPUT: ErrorKind.USER,
    WorkerErrorCode.UNKNOWN_ENGINE: ErrorKind.USER,
    WorkerErrorCode.DATASET_UNREADABLE: ErrorKind.USER,
    WorkerErrorCode.DATASET_UNSAFE: ErrorKind.USER,
    WorkerErrorCode.GPU_OOM: ErrorKind.USER,
    # The checksum was computed at ingest: a mismatch means the stored object changed or the
    # transfer was corrupted, not that the user sent something wrong.
    WorkerErrorCode.DATASET_CHECKSUM_MISMATCH: ErrorKind.SYSTEM,
    WorkerErrorCode.ENGINE_CRASHED: ErrorKind.SYSTEM,
    WorkerErrorCode.ENGINE_INCOMPLETE: ErrorKind.SYSTEM,
    WorkerErrorCode.TIMEOUT: ErrorKind.SYSTEM,
    WorkerErrorCode.CANCELLED: ErrorKind.USER,
    WorkerErrorCode.UPLOAD_FAILED: ErrorKind.SYSTEM,
    WorkerErrorCode.DUPLICATE_RUN: ErrorKind.SYSTEM,
}


class WorkerFailure(Exception):
    """A classified failure of one run. The pipeline turns it into a failed WorkerResult."""

    def __init__(self, code: WorkerErrorCode, message: str, kind: ErrorKind | None = None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.kind = kind or DEFAULT_KIND[code]

    def to_job_error(self) -> JobError:
        return JobError(code=self.code.value, message=self.message, kind=self.kind)
