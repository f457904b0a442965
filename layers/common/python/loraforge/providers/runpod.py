"""A thin httpx client for RunPod's public serverless endpoint API (reference/runpod.md §3).

Never `import runpod` here: it costs 1.5-2 s of Lambda cold start and retries nothing on https.

Retry rules, per operation:
- GET /status, GET /health and POST /cancel are safe to repeat: retried on 429, 5xx and any transport error.
- POST /run starts a paid GPU job, so it is retried only when RunPod certainly did not take it:
  429, 500/502/503 answers and failures before the request was sent (connect errors, pool timeouts).
  A read/write timeout, a broken connection after sending or a 504 from the gateway mean the job
  may exist: that raises RunPodOutcomeUnknown and is never retried here (dispatch decides, using the
  dispatch token the worker echoes back; see logic/dispatch.py).
Backoff is exponential with full jitter and honours Retry-After (seconds), capped.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict

from ..observability import logger
from ..secrets_store import runpod_api_key
from ..settings import get_settings

CONNECT_TIMEOUT_SECONDS = 3.0
MAX_RETRY_AFTER_SECONDS = 20.0
MAX_RUN_BODY_BYTES = 10 * 1024 * 1024
MAX_BACKOFF_SECONDS = 8.0

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
ACTIVE_STATUSES = frozenset({"IN_QUEUE", "IN_PROGRESS", "RUNNING"})


class RunPodJob(BaseModel):
    """What /run, /status, /cancel and the completion webhook say about one RunPod job."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: str
    delayTime: int | None = None  # noqa: N815 - RunPod's field names
    executionTime: int | None = None  # noqa: N815
    output: Any = None
    error: Any = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def billed_seconds(self) -> float | None:
        """(executionTime + delayTime) in seconds: delayTime includes the billed cold start."""
        if self.executionTime is None and self.delayTime is None:
            return None
        return ((self.executionTime or 0) + (self.delayTime or 0)) / 1000.0


class RunPodError(Exception):
    """RunPod answered something we cannot use (a 4xx other than 401/403/404, a malformed body)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RunPodUnavailable(RunPodError):
    """The retry budget ran out on 429/5xx/transport errors; for /run: RunPod certainly took nothing."""


class RunPodOutcomeUnknown(RunPodError):
    """A /run was sent but no answer came back: the job may or may not exist on RunPod."""


class RunPodNotFound(RunPodError):
    """404: unknown job, or past RunPod's retention (30 min after a /run job finished, or after its ttl)."""


class RunPodAuthError(RunPodError):
    """401/403: the API key is wrong or not allowed on this endpoint."""


_BEFORE_SEND = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
_RUN_RETRYABLE_STATUS = frozenset({429, 500, 502, 503})


class RunPodClient:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: httpx.Timeout | None = None,
        max_retries: int | None = None,
        backoff_seconds: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = get_settings()
        self.base_url = (base_url or settings.runpod_base_url).rstrip("/")
        self._api_key = api_key
        self.max_retries = settings.runpod_max_retries if max_retries is None else max_retries
        self.backoff_seconds = settings.runpod_backoff_seconds if backoff_seconds is None else backoff_seconds
        self._sleep = sleep
        if timeout is None:
            timeout = httpx.Timeout(settings.runpod_timeout_seconds, connect=CONNECT_TIMEOUT_SECONDS, pool=CONNECT_TIMEOUT_SECONDS)
        self._http = httpx.Client(timeout=timeout, transport=transport, headers={"accept": "application/json"})

    # -- operations -------------------------------------------------------------------------------
    def run(self, endpoint_id: str, input: dict[str, Any], *, webhook: str | None, execution_timeout_ms: int,  # noqa: A002
            ttl_ms: int) -> RunPodJob:
        """POST /run. Raises RunPodUnavailable (nothing was started) or RunPodOutcomeUnknown (maybe started)."""
        body: dict[str, Any] = {"input": input, "policy": {"executionTimeout": int(execution_timeout_ms), "ttl": int(ttl_ms)}}
        if webhook:
            body["webhook"] = webhook
        size = len(json.dumps(body, separators=(",", ":")))
        if size > MAX_RUN_BODY_BYTES:
            raise RunPodError(f"the /run body is {size} bytes; RunPod accepts at most {MAX_RUN_BODY_BYTES}")
        return self._job(self._request("POST", "run", f"/{endpoint_id}/run", body=body, idempotent=False))

    def status(self, endpoint_id: str, runpod_job_id: str) -> RunPodJob:
        return self._job(self._request("GET", "status", f"/{endpoint_id}/status/{runpod_job_id}", idempotent=True))

    def cancel(self, endpoint_id: str, runpod_job_id: str) -> RunPodJob:
        return self._job(self._request("POST", "cancel", f"/{endpoint_id}/cancel/{runpod_job_id}", idempotent=True))

    def health(self, endpoint_id: str) -> dict[str, Any]:
        body = self._request("GET", "health", f"/{endpoint_id}/health", idempotent=True)
        if not isinstance(body, dict):
            raise RunPodError("RunPod /health answered with a non-object body")
        return body

    def close(self) -> None:
        self._http.close()

    # -- plumbing --------------------------------------------------------------------------------
    @staticmethod
    def _job(body: Any) -> RunPodJob:
        try:
            return RunPodJob.model_validate(body)
        except ValueError as exc:
            raise RunPodError(f"RunPod answered with an unexpected body: {str(body)[:200]}") from exc

    def _headers(self) -> dict[str, str]:
        # Read per request (cached for minutes by powertools parameters) so a rotated key is picked up.
        return {"authorization": f"Bearer {self._api_key or runpod_api_key()}"}

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_SECONDS)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return random.uniform(0, min(MAX_BACKOFF_SECONDS, self.backoff_seconds * 2**attempt))

    def _request(self, method: str, op: str, path: str, *, body: Any = None, idempotent: bool) -> Any:
        url = self.base_url + path
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after: str | None = None
            try:
                resp = self._http.request(method, url, json=body, headers=self._headers())
            except _BEFORE_SEND as exc:
                last = f"{type(exc).__name__}: {exc}"
            except httpx.TransportError as exc:
                if not idempotent:
                    raise RunPodOutcomeUnknown(f"RunPod {op}: no answer after sending ({type(exc).__name__}); the job may exist") from exc
                last = f"{type(exc).__name__}: {exc}"
            else:
                code = resp.status_code
                if code < 300:
                    try:
                        return resp.json()
                    except ValueError as exc:
                        if not idempotent:
                            raise RunPodOutcomeUnknown(f"RunPod {op} answered {code} with a body that is not JSON") from exc
                        raise RunPodError(f"RunPod {op} answered {code} with a body that is not JSON", status_code=code) from exc
                if code in (401, 403):
                    raise RunPodAuthError(f"RunPod {op}: {code} (check the API key and its endpoint scope)", status_code=code)
                if code == 404:
                    raise RunPodNotFound(f"RunPod {op}: 404 not found", status_code=code)
                if code == 504 and not idempotent:
                    raise RunPodOutcomeUnknown(f"RunPod {op}: 504 gateway timeout; the job may exist", status_code=code)
                retryable = code in _RUN_RETRYABLE_STATUS if not idempotent else (code == 429 or code >= 500)
                if not retryable:
                    raise RunPodError(f"RunPod {op}: {code} {resp.text[:200]}", status_code=code)
                last = f"HTTP {code}"
                retry_after = resp.headers.get("retry-after")
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                logger.info("RunPod call failed; retrying", extra={"op": op, "cause": last, "attempt": attempt + 1, "delay": delay})
                self._sleep(delay)
        raise RunPodUnavailable(f"RunPod {op} unavailable after {self.max_retries + 1} attempts (last: {last})")


QUICK_MAX_RETRIES = 1


@lru_cache(maxsize=2)
def get_runpod_client(quick: bool = False) -> RunPodClient:
    """One client (and connection pool) per Lambda container; the API key is read per call (cached by powertools).

    `quick=True`: one retry only, for calls made while an HTTP request waits (the hooks, cancel, the start of
    the next queued job after a run ends): API Gateway gives up after 30 s, and reconcile repeats anything
    left undone.
    """
    return RunPodClient(max_retries=QUICK_MAX_RETRIES) if quick else RunPodClient()


def reset_runpod_client() -> None:
    """Tests and the local stack change RUNPOD_BASE_URL: drop the cached clients."""
    get_runpod_client.cache_clear()
