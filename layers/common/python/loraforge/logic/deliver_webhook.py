"""Deliver one user webhook attempt from WebhookDeliveryQueue.

  check the URL again (DNS now: https, public addresses only; loopback only on the local stack)
  -> POST the stored body, signed per Standard Webhooks with the owner's secret, to the checked address
  -> 2xx: delivered. Otherwise (non-2xx, redirect, timeout, refused): the next attempt goes back on the
     queue with the schedule's delay; after the last attempt the message goes to WebhookDeliveryDLQ
     with the last error. A URL that resolves to a forbidden address goes to the DLQ at once.

Each (webhook-id, attempt) runs once (its outcome is recorded), so a redelivered SQS message does
not POST again, and duplicate retry chains collapse into one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pydantic import ValidationError

from ..models.errors import InvalidInput
from ..notifications.once import IdempotentOnce, OnceGuard
from ..notifications.url_safety import check_webhook_url
from ..notifications.user_webhooks import DeliveryResult, WebhookDelivery, WebhookQueue, WebhookSender, retry_delay
from ..observability import logger, metrics
from ..secrets_store import signing_key
from ..signing import owner_webhook_secret, signed_headers

SAFETY_MARGIN_SECONDS = 2.0


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    DEFERRED = "deferred"
    """Too little time left in this invocation for a full attempt: put back on the queue untried."""


class DeliveryQueuePort(Protocol):
    def enqueue(self, delivery: WebhookDelivery, delay_seconds: int = 0) -> str: ...
    def dead_letter(self, delivery: WebhookDelivery) -> str: ...
    def dead_letter_raw(self, body: str, webhook_id: str = "unreadable") -> str: ...


class SenderPort(Protocol):
    worst_case_seconds: float

    def post(self, url: str, address: str, body: bytes, headers: dict[str, str]) -> DeliveryResult: ...


def _owner_secret(owner: str) -> str:
    return owner_webhook_secret(signing_key(), owner)


@dataclass
class DeliveryPorts:
    once: OnceGuard
    queue: DeliveryQueuePort
    sender: SenderPort
    owner_secret: Callable[[str], str] = _owner_secret
    check_url: Callable[[str], list[str]] = check_webhook_url


def default_delivery_ports(lambda_context: Any = None) -> DeliveryPorts:
    return DeliveryPorts(once=IdempotentOnce("loraforge-webhook", lambda_context=lambda_context), queue=WebhookQueue(), sender=WebhookSender())


def _give_up_or_retry(delivery: WebhookDelivery, error: str, ports: DeliveryPorts) -> dict[str, Any]:
    delay = retry_delay(delivery.attempt)
    if delay is None:
        ports.queue.dead_letter(delivery.failed(error))
        logger.warning("webhook dead-lettered after the last attempt",
                       extra={"webhook_id": delivery.webhook_id, "job_id": delivery.job_id, "attempt": delivery.attempt, "error": error})
        metrics.add_metric(name="WebhookDeadLettered", unit="Count", value=1)
        return {"outcome": DeliveryOutcome.DEAD_LETTERED, "attempt": delivery.attempt, "error": error}
    ports.queue.enqueue(delivery.retry(error), delay)
    logger.info("webhook attempt failed; retry scheduled",
                extra={"webhook_id": delivery.webhook_id, "attempt": delivery.attempt, "retry_in_seconds": delay, "error": error})
    metrics.add_metric(name="WebhookRetryScheduled", unit="Count", value=1)
    return {"outcome": DeliveryOutcome.RETRY_SCHEDULED, "attempt": delivery.attempt, "error": error, "retry_in_seconds": delay}


def attempt_delivery(delivery: WebhookDelivery, ports: DeliveryPorts) -> dict[str, Any]:
    """One attempt (not idempotent by itself: `deliver_webhook` runs it once per (webhook-id, attempt))."""
    try:
        addresses = ports.check_url(delivery.url)
    except InvalidInput as exc:
        error = f"{exc.code}: {exc.message}"
        if isinstance(exc.__cause__, OSError):
            return _give_up_or_retry(delivery, error, ports)  # the name did not resolve: DNS may recover
        # A forbidden target (private, loopback, link-local, not https) does not become allowed by waiting.
        ports.queue.dead_letter(delivery.failed(error))
        logger.warning("webhook refused: unsafe URL", extra={"webhook_id": delivery.webhook_id, "job_id": delivery.job_id, "error": error})
        metrics.add_metric(name="WebhookRefused", unit="Count", value=1)
        return {"outcome": DeliveryOutcome.DEAD_LETTERED, "attempt": delivery.attempt, "error": error}
    if not addresses:
        return _give_up_or_retry(delivery, "INVALID_WEBHOOK_URL: the host name resolved to no address", ports)
    body = delivery.payload.encode()
    headers = signed_headers(ports.owner_secret(delivery.owner), delivery.webhook_id, body)
    result = ports.sender.post(delivery.url, addresses[0], body, headers)
    if result.ok:
        logger.info("webhook delivered", extra={"webhook_id": delivery.webhook_id, "attempt": delivery.attempt, "status_code": result.status_code})
        metrics.add_metric(name="WebhookDelivered", unit="Count", value=1)
        return {"outcome": DeliveryOutcome.DELIVERED, "attempt": delivery.attempt, "status_code": result.status_code}
    return _give_up_or_retry(delivery, result.error or "delivery failed", ports)


def deliver_webhook(body: str, ports: DeliveryPorts, *, remaining_ms: Callable[[], int] | None = None) -> DeliveryOutcome:
    """Handle one WebhookDeliveryQueue message body."""
    try:
        delivery = WebhookDelivery.model_validate_json(body)
    except ValidationError as exc:
        # Retrying cannot make it readable; keep it where an operator looks instead of dropping it.
        ports.queue.dead_letter_raw(body)
        logger.error("unreadable webhook delivery message dead-lettered", extra={"errors": exc.errors(include_url=False)[:5]})
        return DeliveryOutcome.DEAD_LETTERED
    if remaining_ms is not None and remaining_ms() < (ports.sender.worst_case_seconds + SAFETY_MARGIN_SECONDS) * 1000:
        ports.queue.enqueue(delivery)
        return DeliveryOutcome.DEFERRED
    result = ports.once.run(f"delivery#{delivery.webhook_id}#{delivery.attempt}", lambda: attempt_delivery(delivery, ports))
    return DeliveryOutcome(result["outcome"])
