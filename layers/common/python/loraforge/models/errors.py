"""Errors every layer raises and the API maps to HTTP. Each carries a stable `code`."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from .base import DomainModel


class ErrorKind(StrEnum):
    """`user`: the input was at fault, never retried automatically. `system`: ours or the platform's."""

    USER = "user"
    SYSTEM = "system"


class JobError(DomainModel):
    code: str = Field(description="Stable machine-readable code, e.g. DATASET_INVALID, GPU_OOM, WORKER_SILENT")
    message: str = Field(description="What happened and what to do, for a person")
    kind: ErrorKind = ErrorKind.SYSTEM


class LoraforgeError(Exception):
    """Base of the typed errors. `status` is the HTTP status the API answers with."""

    status = 400
    code = "BAD_REQUEST"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(LoraforgeError):
    status = 422
    code = "INVALID_INPUT"


class NotFound(LoraforgeError):
    status = 404
    code = "NOT_FOUND"


class Conflict(LoraforgeError):
    status = 409
    code = "CONFLICT"


class InvalidTransition(Conflict):
    """A status change outside the transition table, or a lost optimistic-version race."""

    code = "INVALID_TRANSITION"


class Unauthorized(LoraforgeError):
    status = 401
    code = "UNAUTHORIZED"


class PayloadTooLarge(LoraforgeError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class TooManyRequests(LoraforgeError):
    status = 429
    code = "TOO_MANY_REQUESTS"
