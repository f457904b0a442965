"""User webhooks: the event body, the SQS delivery message, the retry schedule, and the pinned HTTP POST.

Delivery is at least once through WebhookDeliveryQueue. Each event has a stable `webhook-id`
(a hash of what it is about), so a receiver can drop the duplicates that retries and redelivery
cause. Signing follows Standard Webhooks (`loraforge.signing`) with the owner's secret, the one
`GET /v1/webhook-secret` reveals.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

from ..dal.clients import client
from ..models.artifact import Artifact
from ..models.common import utcnow
from ..models.job import Job
from ..settings import get_settings
from .cost_statement import CostStatement, cost_statement

RETRY_DELAYS_SECONDS: tuple[int, ...] = (30, 120, 300, 900, 900, 900, 900)
"""Delay before attempt 2, 3, …: 8 attempts over 67.5 minutes. SQS caps DelaySeconds at 900."""
MAX_ATTEMPTS = len(RETRY_DELAYS_SECONDS) + 1
USER_AGENT = "loraforge-webhooks/1"


class WebhookEventType(StrEnum):
    RUNNING = "job.running"
    CHECKPOINT = "job.checkpoint"
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"


def webhook_id(job_id: str, event_type: WebhookEventType, *discriminators: str | int) -> str:
    """Stable id of one event: the same change redelivered gets the same id, a new change a new one."""
    material = "\x1f".join([job_id, str(event_type), *map(str, discriminators)])
    return "msg_" + hashlib.sha256(material.encode()).hexdigest()[:32]


def build_event(event_type: WebhookEventType, job: Job, *, event_id: str, created_at: datetime,
                checkpoint: Artifact | None = None, cost: CostStatement | None = None) -> dict[str, Any]:
    """`{type, id, created_at, data}`; data is the job as `GET /v1/jobs/{id}` shows it (plus the checkpoint for job.checkpoint).

    `data.cost` adds to the job's cost fields what the email of the same change states: `billing` (billed | partial |
    pending | none) and, while RunPod has not billed the run, `measured_seconds` / `measured_usd` (cost_statement.py).
    """
    data = job.public()
    data["cost"] = (cost or cost_statement(job)).payload()
    if checkpoint is not None:
        data["checkpoint"] = checkpoint.model_dump(mode="json")
    return {"type": str(event_type), "id": event_id, "created_at": created_at.isoformat().replace("+00:00", "Z"), "data": data}


class WebhookDelivery(BaseModel):
    """One SQS message: one attempt to deliver one event. The body bytes stay the same across attempts."""

    webhook_id: str
    event_type: WebhookEventType
    job_id: str
    owner: str
    url: str
    payload: str = Field(description="The JSON body, exactly as POSTed and signed")
    attempt: int = Field(default=1, ge=1)
    first_queued_at: datetime = Field(default_factory=utcnow)
    last_error: str | None = None

    def retry(self, error: str) -> WebhookDelivery:
        return self.model_copy(update={"attempt": self.attempt + 1, "last_error": error})

    def failed(self, error: str) -> WebhookDelivery:
        return self.model_copy(update={"last_error": error})


def retry_delay(attempt: int) -> int | None:
    """Seconds to wait before the attempt after `attempt`, or None when `attempt` was the last one."""
    return RETRY_DELAYS_SECONDS[attempt - 1] if attempt < MAX_ATTEMPTS else None


class WebhookQueue:
    """WebhookDeliveryQueue (attempts) and WebhookDeliveryDLQ (gave up)."""

    def __init__(self, queue_url: str | None = None, dlq_url: str | None = None) -> None:
        settings = get_settings()
        self.queue_url = queue_url or settings.webhook_queue_url
        self.dlq_url = dlq_url or settings.webhook_dlq_url

    def enqueue(self, delivery: WebhookDelivery, delay_seconds: int = 0) -> str:
        """1 SendMessage; returns the SQS message id."""
        if not self.queue_url:
            raise RuntimeError("no webhook queue configured: set WEBHOOK_QUEUE_URL")
        return self._send(self.queue_url, delivery.model_dump_json(), delivery.webhook_id, min(max(delay_seconds, 0), 900))

    def dead_letter(self, delivery: WebhookDelivery) -> str:
        """1 SendMessage to the DLQ with the last error; an operator can inspect and redrive it."""
        return self.dead_letter_raw(delivery.model_dump_json(), delivery.webhook_id)

    def dead_letter_raw(self, body: str, webhook_id: str = "unreadable") -> str:
        if not self.dlq_url:
            raise RuntimeError("no webhook dead-letter queue configured: set WEBHOOK_DLQ_URL")
        return self._send(self.dlq_url, body, webhook_id, 0)

    @staticmethod
    def _send(queue_url: str, body: str, msg_id: str, delay: int) -> str:
        resp = client("sqs").send_message(
            QueueUrl=queue_url, MessageBody=body, DelaySeconds=delay,
            MessageAttributes={"webhook_id": {"DataType": "String", "StringValue": msg_id}},
        )
        return str(resp["MessageId"])


class DeliveryResult(BaseModel):
    ok: bool
    status_code: int | None = None
    error: str | None = None


def pinned_target(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL rewritten to connect to `address`, with the Host header and TLS SNI of the original host.

    Connecting to the address the SSRF check approved means a DNS answer that changes between
    check and connect (DNS rebinding) cannot send the request elsewhere. Certificate checks still
    use the original host name (httpx's `sni_hostname` extension).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ip_host = f"[{address}]" if ":" in address else address
    target = urlunsplit((parts.scheme, f"{ip_host}:{port}", parts.path or "/", parts.query, ""))
    default_port = (parts.scheme == "https" and port == 443) or (parts.scheme == "http" and port == 80)
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if default_port else f"{bracketed}:{port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return target, {"host": host_header}, extensions


class WebhookSender:
    """One POST with a bounded timeout, no redirects, no proxies from the environment."""

    def __init__(self, timeout_seconds: float = 10.0, connect_timeout_seconds: float = 5.0, write_timeout_seconds: float = 5.0) -> None:
        self.timeout_seconds = timeout_seconds
        self.connect_timeout_seconds = min(connect_timeout_seconds, timeout_seconds)
        self.write_timeout_seconds = min(write_timeout_seconds, timeout_seconds)
        self.worst_case_seconds = self.connect_timeout_seconds + self.write_timeout_seconds + timeout_seconds
        """Longest one attempt can take (connect, send the body, wait for the response status)."""

    def post(self, url: str, address: str, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        import httpx  # only the delivery function posts; keeps httpx off the notify function's cold start

        target, host_header, extensions = pinned_target(url, address)
        all_headers = {**headers, **host_header, "user-agent": USER_AGENT}
        timeout = httpx.Timeout(self.timeout_seconds, connect=self.connect_timeout_seconds, write=self.write_timeout_seconds,
                                pool=self.connect_timeout_seconds)
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as http:
                request = http.build_request("POST", target, content=body, headers=all_headers, extensions=extensions)
                response = http.send(request, stream=True)
                response.close()  # only the status matters; never read an unbounded body
        except httpx.TimeoutException:
            return DeliveryResult(ok=False, error=f"timed out after {self.timeout_seconds:g} s")
        except httpx.ConnectError as exc:
            return DeliveryResult(ok=False, error=f"could not connect: {exc or 'connection refused'}")
        except httpx.HTTPError as exc:
            return DeliveryResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        code = response.status_code
        if 200 <= code < 300:
            return DeliveryResult(ok=True, status_code=code)
        if 300 <= code < 400:
            location = response.headers.get("location", "")
            return DeliveryResult(ok=False, status_code=code, error=f"HTTP {code} redirect to {location[:200]!r} (redirects are not followed)")
        return DeliveryResult(ok=False, status_code=code, error=f"HTTP {code}")


def encode_payload(event: dict[str, Any]) -> str:
    """Compact, key-ordered JSON: the exact text that is signed and POSTed on every attempt."""
    return json.dumps(event, separators=(",", ":"), sort_keys=True)
