"""In-memory stand-ins for the notification channels (unit tests only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loraforge.logic.deliver_webhook import DeliveryPorts
from loraforge.logic.notify import NotifyPorts
from loraforge.models import Dataset, Job
from loraforge.notifications.email_messages import EmailMessage
from loraforge.notifications.eventbridge import BusEvent
from loraforge.notifications.user_webhooks import DeliveryResult, WebhookDelivery

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class MemoryOnce:
    """Completed keys and their results; a raising action records nothing (like powertools idempotency)."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, key: str, action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if key not in self.results:
            self.results[key] = action()
        return self.results[key]


@dataclass
class Recorder:
    emails: list[EmailMessage] = field(default_factory=list)
    events: list[BusEvent] = field(default_factory=list)
    webhooks: list[tuple[WebhookDelivery, int]] = field(default_factory=list)
    dead: list[WebhookDelivery | str] = field(default_factory=list)
    subscriptions: list[tuple[str, str]] = field(default_factory=list)
    fail_events: int = 0

    def publish(self, message: EmailMessage) -> str:
        self.emails.append(message)
        return f"sns-{len(self.emails)}"

    def put(self, event: BusEvent) -> str:
        if self.fail_events:
            self.fail_events -= 1
            raise RuntimeError("ThrottlingException")
        self.events.append(event)
        return f"evt-{len(self.events)}"

    def enqueue(self, delivery: WebhookDelivery, delay_seconds: int = 0) -> str:
        self.webhooks.append((delivery, delay_seconds))
        return f"sqs-{len(self.webhooks)}"

    def dead_letter(self, delivery: WebhookDelivery) -> str:
        self.dead.append(delivery)
        return "dlq"

    def dead_letter_raw(self, body: str, webhook_id: str = "unreadable") -> str:
        self.dead.append(body)
        return "dlq"

    def ensure(self, owner: str, email: str) -> str:
        self.subscriptions.append((owner, email))
        return "subscribed"


@dataclass
class JobStore:
    jobs: dict[str, Job] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)

    def get_job(self, job_id: str, consistent: bool = True) -> Job | None:
        return self.jobs.get(job_id)

    def get_dataset(self, dataset_id: str) -> Dataset | None:
        return self.datasets.get(dataset_id)


def notify_ports(recorder: Recorder, jobs: JobStore | None = None, once: MemoryOnce | None = None) -> NotifyPorts:
    return NotifyPorts(once=once or MemoryOnce(), jobs=jobs or JobStore(), events=recorder, bucket="loraforge-data",
                       email=recorder, subscriptions=recorder, webhooks=recorder)


@dataclass
class ScriptedSender:
    """Answers each POST with the next scripted result; records what it was asked to send."""

    results: list[DeliveryResult]
    posts: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    worst_case_seconds: float = 20.0

    def post(self, url: str, address: str, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        self.posts.append((url, address, body, headers))
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


def delivery_ports(recorder: Recorder, sender: ScriptedSender, addresses: list[str] | Exception | None = None) -> DeliveryPorts:
    def check_url(url: str) -> list[str]:
        if isinstance(addresses, Exception):
            raise addresses
        return addresses or ["93.184.216.34"]

    return DeliveryPorts(once=MemoryOnce(), queue=recorder, sender=sender, owner_secret=lambda owner: SECRET, check_url=check_url)
