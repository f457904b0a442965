"""Notify users of job and dataset changes seen on the jobs table's stream (DESIGN §1, §3).

This code never writes a job's status: it reads the stream after the fact, so notifying can fail,
lag or repeat without touching the path that changes state. Per change it plans a few actions,
then performs each one exactly once (its own idempotency key), so a redelivered record or a
retried batch repeats nothing that already happened:

  job INSERT with notify.email     -> subscribe the address to the topic (filter policy: the owner), once per (owner, email)
  job status change                -> EventBridge `Training Job State Change` (every change)
                                      each channel states the same cost (notifications/cost_statement.py): RunPod's
                                      billed figure when recorded, else the measured run time or the estimate, labelled
  job cost recorded later          -> nothing (a MODIFY without a status change; GET /v1/jobs/{id} shows it)
  job running|succeeded|failed|cancelled
                                   -> SNS email (running only with notify.on_running)
                                   -> webhook job.<status> enqueued for delivery when notify.webhook_url is set
  new checkpoint artifact          -> webhook job.checkpoint (needs the stream filter to pass ART#checkpoint# INSERTs)
  dataset status change            -> EventBridge `Dataset Validation Result` (ready|invalid); SNS email when invalid
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel

from ..dal.dynamo import deserialize
from ..dal.jobs_table import JobsTable, strip_keys
from ..models.artifact import Artifact, ArtifactKind
from ..models.dataset import Dataset
from ..models.job import Job
from ..models.status import DatasetStatus, JobStatus
from ..notifications.cost_statement import CostStatement, cost_statement
from ..notifications.email_messages import EmailMessage, dataset_email, job_email
from ..notifications.eventbridge import (
    DATASET_VALIDATION_RESULT,
    JOB_STATE_CHANGE,
    BusEvent,
    EventPublisher,
    dataset_detail,
    job_detail,
)
from ..notifications.once import IdempotentOnce, OnceGuard
from ..notifications.sns import SnsNotifier
from ..notifications.subscriptions import EmailSubscriptions, normalize_email
from ..notifications.user_webhooks import (
    WebhookDelivery,
    WebhookEventType,
    WebhookQueue,
    build_event,
    encode_payload,
    webhook_id,
)
from ..observability import logger, metrics
from ..settings import get_settings
from .job_cost import gpu_price_per_second

CHECKPOINT_SK_PREFIX = f"ART#{ArtifactKind.CHECKPOINT}#"
EMAIL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
WEBHOOK_TYPES = {
    JobStatus.RUNNING: WebhookEventType.RUNNING,
    JobStatus.SUCCEEDED: WebhookEventType.SUCCEEDED,
    JobStatus.FAILED: WebhookEventType.FAILED,
    JobStatus.CANCELLED: WebhookEventType.CANCELLED,
}
DATASET_RESULTS = frozenset({DatasetStatus.READY, DatasetStatus.INVALID})
DATASET_INVALID = "DATASET_INVALID"


# -- the stream record ------------------------------------------------------------------------------
class StreamChange(BaseModel):
    """One DynamoDB stream record, images deserialized to plain values."""

    event_id: str
    event_name: str
    pk: str
    sk: str
    new_image: dict[str, Any] | None = None
    old_image: dict[str, Any] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StreamChange:
        ddb = record.get("dynamodb") or {}
        keys = deserialize(ddb.get("Keys") or {})
        new, old = ddb.get("NewImage"), ddb.get("OldImage")
        return cls(
            event_id=str(record.get("eventID", "")), event_name=str(record.get("eventName", "")),
            pk=str(keys.get("pk", "")), sk=str(keys.get("sk", "")),
            new_image=deserialize(new) if new else None, old_image=deserialize(old) if old else None,
        )

    @property
    def is_job(self) -> bool:
        return self.pk.startswith("JOB#") and self.sk == "META"

    @property
    def is_dataset(self) -> bool:
        return self.pk.startswith("DS#") and self.sk == "META"

    @property
    def is_checkpoint(self) -> bool:
        return self.pk.startswith("JOB#") and self.sk.startswith(CHECKPOINT_SK_PREFIX)

    @property
    def old_status(self) -> str | None:
        return str(self.old_image["status"]) if self.old_image and "status" in self.old_image else None


# -- actions ------------------------------------------------------------------------------------------
class SubscribeEmail(BaseModel):
    key: str
    owner: str
    email: str


class SendEmail(BaseModel):
    key: str
    message: EmailMessage


class PutBusEvent(BaseModel):
    key: str
    event: BusEvent


class EnqueueWebhook(BaseModel):
    key: str
    delivery: WebhookDelivery


Action = SubscribeEmail | SendEmail | PutBusEvent | EnqueueWebhook


def _change_key(kind: str, entity_id: str, version: int, status: str) -> str:
    # (entity, id, version, status) names one change: a redelivery has the same, a later change a higher version.
    return f"{kind}#{entity_id}#v{version}#{status}"


def job_cost_statement(job: Job) -> CostStatement:
    """The cost every channel states for this change, priced like `cost.actual_usd` (the GPU class's price parameter)."""
    return cost_statement(job, gpu_price_per_second(job))


def _webhook_action(job: Job, event_type: WebhookEventType, created_at: datetime, *discriminators: str | int,
                    checkpoint: Artifact | None = None) -> EnqueueWebhook:
    event_id = webhook_id(job.id, event_type, *discriminators)
    body = build_event(event_type, job, event_id=event_id, created_at=created_at, checkpoint=checkpoint, cost=job_cost_statement(job))
    delivery = WebhookDelivery(webhook_id=event_id, event_type=event_type, job_id=job.id, owner=job.owner,
                               url=job.notify.webhook_url or "", payload=encode_payload(body))
    return EnqueueWebhook(key=f"webhook#{event_id}", delivery=delivery)


def plan_job_change(job: Job, previous_status: JobStatus | None, *, inserted: bool, bucket: str,
                    dataset: Dataset | None = None) -> list[Action]:
    actions: list[Action] = []
    if inserted and job.notify.email:
        email = normalize_email(job.notify.email)
        actions.append(SubscribeEmail(key=f"subscribe#{job.owner}#{email}", owner=job.owner, email=email))
    if previous_status == job.status:
        return actions  # progress, cost or other fields changed; not a status change
    change = _change_key("job", job.id, job.version, job.status)
    # One statement for the email, the webhook and the event: they state the same cost, however sure it is.
    cost = job_cost_statement(job)
    if job.status in EMAIL_STATUSES or (job.status == JobStatus.RUNNING and job.notify.on_running):
        email = job_email(job, previous_status=previous_status, bucket=bucket, dataset=dataset, cost=cost)
        actions.append(SendEmail(key=f"email#{change}", message=email))
    if job.notify.webhook_url and job.status in WEBHOOK_TYPES:
        actions.append(_webhook_action(job, WEBHOOK_TYPES[job.status], job.updated_at, f"attempt{job.attempts}", f"v{job.version}"))
    detail = job_detail(job, previous_status, bucket=bucket, cost=cost)
    actions.append(PutBusEvent(key=f"event#{change}", event=BusEvent(detail_type=JOB_STATE_CHANGE, detail=detail, time=job.updated_at)))
    return actions


def plan_dataset_change(dataset: Dataset, previous_status: DatasetStatus | None, *, bucket: str) -> list[Action]:
    if previous_status == dataset.status or dataset.status not in DATASET_RESULTS:
        return []
    change = _change_key("dataset", dataset.id, dataset.version, dataset.status)
    actions: list[Action] = []
    if dataset.status == DatasetStatus.INVALID:
        actions.append(SendEmail(key=f"email#{change}", message=dataset_email(dataset, bucket=bucket)))
    event = BusEvent(detail_type=DATASET_VALIDATION_RESULT, detail=dataset_detail(dataset, previous_status), time=dataset.updated_at)
    actions.append(PutBusEvent(key=f"event#{change}", event=event))
    return actions


def plan_checkpoint(job: Job, checkpoint: Artifact) -> list[Action]:
    if not job.notify.webhook_url:
        return []
    created = checkpoint.created_at or job.updated_at
    # step + content hash: a redelivery repeats the id; a different file saved at the same step does not.
    return [_webhook_action(job, WebhookEventType.CHECKPOINT, created, f"step{checkpoint.step}", checkpoint.sha256, checkpoint=checkpoint)]


# -- ports --------------------------------------------------------------------------------------------
class EmailPort(Protocol):
    def publish(self, message: EmailMessage) -> str: ...


class SubscriptionPort(Protocol):
    def ensure(self, owner: str, email: str) -> str: ...


class EventPort(Protocol):
    def put(self, event: BusEvent) -> str: ...


class WebhookQueuePort(Protocol):
    def enqueue(self, delivery: WebhookDelivery, delay_seconds: int = 0) -> str: ...


class JobReader(Protocol):
    def get_job(self, job_id: str, consistent: bool = True) -> Job | None: ...
    def get_dataset(self, dataset_id: str) -> Dataset | None: ...


@dataclass
class NotifyPorts:
    """Where notifications go. A channel whose resource is not configured is None and skipped (logged)."""

    once: OnceGuard
    jobs: JobReader
    events: EventPort
    bucket: str
    email: EmailPort | None = None
    subscriptions: SubscriptionPort | None = None
    webhooks: WebhookQueuePort | None = None


def default_notify_ports(lambda_context: Any = None) -> NotifyPorts:
    settings = get_settings()
    table = JobsTable()
    sns = SnsNotifier() if settings.topic_arn else None
    return NotifyPorts(
        once=IdempotentOnce("loraforge-notify", lambda_context=lambda_context),
        jobs=table,
        events=EventPublisher(),
        bucket=settings.bucket_name,
        email=sns,
        subscriptions=EmailSubscriptions(sns, table) if sns else None,
        webhooks=WebhookQueue() if settings.webhook_queue_url else None,
    )


# -- performing ---------------------------------------------------------------------------------------
class BlockedByEarlierFailure(Exception):
    """A later record of an item whose earlier record failed in this batch: kept for the retry, in order."""


def _effect(action: Action, ports: NotifyPorts) -> Callable[[], dict[str, Any]] | None:
    match action:
        case SubscribeEmail() if ports.subscriptions is not None:
            subscriptions = ports.subscriptions
            return lambda: {"subscription": str(subscriptions.ensure(action.owner, action.email))}
        case SendEmail() if ports.email is not None:
            email = ports.email
            return lambda: {"message_id": email.publish(action.message)}
        case PutBusEvent():
            return lambda: {"event_id": ports.events.put(action.event)}
        case EnqueueWebhook() if ports.webhooks is not None:
            webhooks = ports.webhooks
            return lambda: {"message_id": webhooks.enqueue(action.delivery)}
    return None


def perform(actions: list[Action], ports: NotifyPorts) -> list[str]:
    """Run each action once; returns the keys performed (or found already performed). An error propagates."""
    done: list[str] = []
    for action in actions:
        effect = _effect(action, ports)
        if effect is None:
            logger.warning("notification channel not configured; skipped", extra={"action": type(action).__name__, "key": action.key})
            continue
        ports.once.run(action.key, effect)
        metrics.add_metric(name=f"Notify{type(action).__name__}", unit="Count", value=1)
        done.append(action.key)
    return done


@dataclass
class StreamNotifier:
    """Handles one batch of stream records (one instance per invocation)."""

    ports: NotifyPorts
    _failed_items: set[str] = field(default_factory=set)

    def handle(self, record: dict[str, Any]) -> list[str]:
        change = StreamChange.from_record(record)
        if change.pk in self._failed_items:
            # The stream retries from the first failed record; handling a later change of the same job
            # now would notify out of order (e.g. `succeeded` before `running`).
            raise BlockedByEarlierFailure(f"an earlier record of {change.pk} failed in this batch")
        try:
            return perform(self.plan(change), self.ports)
        except Exception:
            self._failed_items.add(change.pk)
            raise

    def plan(self, change: StreamChange) -> list[Action]:
        if change.event_name not in ("INSERT", "MODIFY") or change.new_image is None:
            return []
        if change.is_job and change.new_image.get("entity") == "job":
            job = Job.model_validate(strip_keys(change.new_image))
            previous = JobStatus(change.old_status) if change.old_status else None
            dataset = None
            if job.status == JobStatus.FAILED and previous != job.status and job.error and job.error.code == DATASET_INVALID:
                dataset = self.ports.jobs.get_dataset(job.dataset_id)  # the email lists why it was rejected
            return plan_job_change(job, previous, inserted=change.event_name == "INSERT", bucket=self.ports.bucket, dataset=dataset)
        if change.is_dataset and change.new_image.get("entity") == "dataset":
            dataset = Dataset.model_validate(strip_keys(change.new_image))
            previous_ds = DatasetStatus(change.old_status) if change.old_status else None
            return plan_dataset_change(dataset, previous_ds, bucket=self.ports.bucket)
        if change.is_checkpoint:
            checkpoint = Artifact.model_validate(strip_keys(change.new_image))
            if change.old_image and change.old_image.get("sha256") == checkpoint.sha256:
                return []  # the same file recorded again
            job = self.ports.jobs.get_job(change.pk.removeprefix("JOB#"))
            return plan_checkpoint(job, checkpoint) if job else []
        return []

