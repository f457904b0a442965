"""Event pumps: deliver what AWS would deliver to the functions, with Lambda's batch semantics.

- S3 → EventBridge → ingest: the bucket has EventBridge notifications on (template); a rule on the
  default bus with the ingest function's own pattern targets an SQS capture queue (moto cannot
  invoke Lambda code), and the pump invokes the ingest handler with each captured event; a raising
  invocation is retried per the function's `EventInvokeConfig`, then recorded on its `OnFailure` queue.
- DynamoDB stream → dispatch, notify: one reader per event source mapping (each keeps its own
  position, as Lambda's do), the template's FilterCriteria applied with moto's EventBridge pattern
  matcher (Lambda filters use the same pattern language), batches of `BatchSize`, partial failures
  (`batchItemFailures` → retried from the lowest failed sequence number), `MaximumRetryAttempts`,
  then a failure record on the `OnFailure` queue and the shard moves on.
- SQS → webhook delivery: `BatchSize` messages per invocation; successful ones deleted, failed ones
  left to come back after the queue's visibility timeout (and its redrive policy's DLQ).
- Schedule → reconcile: the template's `Input`, every `reconcile_interval` seconds locally; a raising run follows the
  function's `EventInvokeConfig` (asynchronous invocation), like an EventBridge-invoked one.

Every pump polls; intervals are configurable (default 0.2 s). Invocation timings are kept for the
benchmarks (`history`).
"""

from __future__ import annotations

import abc
import base64
import json
import logging
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moto.events.models import EventPattern

from .lambda_runtime import LocalFunction, TemplateRefs

log = logging.getLogger("loraforge.local.pumps")

DEFAULT_POLL_INTERVAL = 0.2
MAX_RETRY_DELAY = 5.0


@dataclass
class Invocation:
    """One handler call made by a pump (for benchmarks and `loraforge local up` diagnostics)."""

    function: str
    source: str
    started: float  # time.time()
    duration: float
    records: int
    failed: bool
    picked_up: float = 0.0  # time.time() the pump read the records that led to this call
    subjects: tuple[str, ...] = ()  # what the call was about: S3 keys, table item keys (pk), message ids


@dataclass
class PumpHistory:
    items: deque[Invocation] = field(default_factory=lambda: deque(maxlen=5000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, item: Invocation) -> None:
        with self.lock:
            self.items.append(item)

    def snapshot(self) -> list[Invocation]:
        with self.lock:
            return list(self.items)


def retry_delay(attempt: int, base: float) -> float:
    return min(MAX_RETRY_DELAY, max(base, 0.05) * (2 ** max(0, attempt - 1)))


class Pump(threading.Thread):
    """A polling loop: `poll_once()` returns True when it did work (poll again at once), else the pump sleeps."""

    source = "pump"

    def __init__(self, name: str, *, poll_interval: float = DEFAULT_POLL_INTERVAL, history: PumpHistory | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.poll_interval = poll_interval
        self.history = history or PumpHistory()
        self._stop_event = threading.Event()
        self.errors = 0

    def stop(self) -> None:
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleeps unless stopped; True when the pump should stop."""
        return self._stop_event.wait(seconds)

    def run(self) -> None:
        while not self.stopping:
            try:
                busy = self.poll_once()
            except Exception:  # a pump never dies: log and keep polling (moto restarting, a transient error)
                self.errors += 1
                log.error("%s: poll failed\n%s", self.name, traceback.format_exc())
                busy = False
            if not busy and self.wait(self.poll_interval):
                return

    @abc.abstractmethod
    def poll_once(self) -> bool:
        """Deliver what is waiting; True when there was work (the pump then polls again at once)."""

    def _call(self, function: LocalFunction, event: Any, records: int, picked_up: float,
              subjects: tuple[str, ...] = ()) -> tuple[Any, BaseException | None]:
        started = time.time()
        perf = time.perf_counter()
        try:
            result, error = function.invoke(event), None
        except Exception as exc:  # Lambda reports a function error; the pump applies the retry policy
            result, error = None, exc
            log.error("%s: %s raised\n%s", self.name, function.spec.logical_id, traceback.format_exc())
        self.history.add(Invocation(function=function.spec.logical_id, source=self.source, started=started,
                                    duration=time.perf_counter() - perf, records=records, failed=error is not None, picked_up=picked_up,
                                    subjects=subjects))
        return result, error


# -- S3 via EventBridge ------------------------------------------------------------------------------
class AsyncInvocationPump(Pump):
    """A pump whose source invokes Lambda asynchronously (EventBridge rules, Scheduler): a raising invocation is tried
    again per the function's `EventInvokeConfig` (`MaximumRetryAttempts`, default 2; Lambda waits 1 then 2 minutes,
    locally the backoff is short), then an invocation record goes to its `OnFailure` destination."""

    function: LocalFunction
    clients: Callable[[str], Any]

    def _async_config(self, refs: TemplateRefs) -> None:
        invoke_config = refs.resolve(dict(self.function.spec.event_invoke_config))
        self.max_retries = int(invoke_config.get("MaximumRetryAttempts", 2))
        on_failure = ((invoke_config.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        self.on_failure_url = refs.queue_url_for_arn(on_failure) if on_failure else None

    def invoke_async(self, event: dict[str, Any], picked_up: float | None = None, log_keys: tuple[str, ...] = ()) -> bool:
        """True if an invocation succeeded; False once every try failed (the failure record is then written)."""
        attempt = 0
        while True:
            _, error = self._call(self.function, event, 1, picked_up or time.time(), log_keys)
            if error is None:
                return True
            attempt += 1
            if attempt > self.max_retries or self.stopping:
                break
            if self.wait(retry_delay(attempt, self.poll_interval)):
                break
        log.error("%s: event %s failed %d invocations", self.name, event.get("id"), attempt)
        if self.on_failure_url:
            record = {
                "version": "1.0",
                "timestamp": datetime.now(UTC).isoformat(),
                "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": f"{self.function.context().invoked_function_arn}:$LATEST",
                                   "condition": "RetriesExhausted", "approximateInvokeCount": attempt},
                "requestPayload": event,
                "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
                "responsePayload": {"errorType": type(error).__name__, "errorMessage": str(error)},
            }
            self.clients("sqs").send_message(QueueUrl=self.on_failure_url, MessageBody=json.dumps(record, default=str))
        return False


class EventBridgePump(AsyncInvocationPump):
    """EventBridge rule (the function's pattern) → SQS capture queue → the function, one event per invocation.

    EventBridge invokes Lambda asynchronously, so a raising invocation follows the function's
    `EventInvokeConfig`: `MaximumRetryAttempts` more tries (Lambda waits 1 then 2 minutes; locally the
    backoff is short), then an invocation record on its `OnFailure` destination. The rule's own
    `RetryPolicy`/`DeadLetterConfig` cover events EventBridge cannot deliver, which cannot happen here.
    """

    source = "eventbridge"

    def __init__(self, function: LocalFunction, event_name: str, properties: Mapping[str, Any], refs: TemplateRefs, clients: Callable[[str], Any],
                 **kwargs: Any) -> None:
        super().__init__(f"pump-{function.spec.logical_id}-{event_name}", **kwargs)
        self.function = function
        self.refs = refs
        self.clients = clients
        props = refs.resolve(dict(properties))
        self.pattern: dict[str, Any] = props["Pattern"]
        self.bus = props.get("EventBusName", "default")
        self._async_config(refs)
        self.rule_name = f"loraforge-local-{function.spec.logical_id}-{event_name}"[:64]
        self.queue_url = ""

    def setup(self) -> None:
        sqs, events = self.clients("sqs"), self.clients("events")
        self.queue_url = sqs.create_queue(QueueName=f"{self.rule_name}-capture"[:80], Attributes={"VisibilityTimeout": "600"})["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name=self.rule_name, EventBusName=self.bus, EventPattern=json.dumps(self.pattern), State="ENABLED")
        events.put_targets(Rule=self.rule_name, EventBusName=self.bus, Targets=[{"Id": "capture", "Arn": queue_arn}])

    def poll_once(self) -> bool:
        sqs = self.clients("sqs")
        messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
        picked_up = time.time()
        for message in messages:
            if self.stopping:
                return False
            self.deliver(json.loads(message["Body"]), picked_up)
            sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return bool(messages)

    def deliver(self, event: dict[str, Any], picked_up: float | None = None) -> bool:
        """Invokes with Lambda's async retries; an event failing every try goes to the on-failure destination. True if handled."""
        key = ((event.get("detail") or {}).get("object") or {}).get("key") if isinstance(event, dict) else None
        return self.invoke_async(event, picked_up, (str(key),) if key else ())


# -- DynamoDB stream -----------------------------------------------------------------------------------
def filter_patterns(properties: Mapping[str, Any]) -> list[EventPattern]:
    """FilterCriteria → moto's EventBridge pattern objects (Lambda filtering uses the EventBridge pattern syntax)."""
    filters = ((properties.get("FilterCriteria") or {}).get("Filters")) or []
    return [EventPattern.load(entry["Pattern"]) for entry in filters]


def record_matches(record: Mapping[str, Any], patterns: list[EventPattern]) -> bool:
    """No filter → every record; otherwise the record must match at least one pattern (Lambda ORs filters)."""
    return not patterns or any(pattern.matches_event(dict(record)) for pattern in patterns)


def lambda_stream_record(record: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A boto3 `get_records` record back in the JSON shape Lambda delivers (epoch timestamps, base64 binaries, eventSourceARN)."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes | bytearray):
            return base64.b64encode(value).decode()
        if isinstance(value, datetime):
            return int(value.timestamp())
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | set | tuple):
            return [plain(v) for v in value]
        return value

    out = plain(dict(record))
    out["eventSourceARN"] = stream_arn
    return out


class DynamoStreamPump(Pump):
    """One event source mapping of a DynamoDB stream: filter, batch, invoke, partial failures, retries, OnFailure."""

    source = "dynamodb-stream"

    def __init__(self, function: LocalFunction, event_name: str, properties: Mapping[str, Any], refs: TemplateRefs, clients: Callable[[str], Any],
                 *, prune_iterators: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        super().__init__(f"pump-{function.spec.logical_id}-{event_name}", **kwargs)
        self.function = function
        self.clients = clients
        props = refs.resolve(dict(properties))
        self.stream_arn: str = props["Stream"]
        self.batch_size = int(props.get("BatchSize", 100))
        self.max_retries = int(props.get("MaximumRetryAttempts", -1))
        self.report_item_failures = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
        on_failure = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        self.on_failure_url = refs.queue_url_for_arn(on_failure) if on_failure else None
        self.patterns = filter_patterns(props)
        self.prune_iterators = prune_iterators
        self._iterators: dict[str, str] = {}
        self._pending: list[dict[str, Any]] = []  # matching records not yet delivered, in shard order
        self._picked_up = 0.0
        self.filtered_out = 0
        self.delivered = 0

    def setup(self) -> None:
        """Start at the beginning of the stream: the local table is new, so nothing written since start-up is missed."""
        streams = self.clients("dynamodbstreams")
        for shard in streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"]["Shards"]:
            self._iterators[shard["ShardId"]] = streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]

    def _read(self) -> None:
        streams = self.clients("dynamodbstreams")
        for shard_id, iterator in list(self._iterators.items()):
            response = streams.get_records(ShardIterator=iterator, Limit=1000)
            self._iterators[shard_id] = response["NextShardIterator"]
            if self.prune_iterators:
                self.prune_iterators(iterator)
            for raw in response.get("Records", []):
                record = lambda_stream_record(raw, self.stream_arn)
                if record_matches(record, self.patterns):
                    if not self._pending:
                        self._picked_up = time.time()
                    self._pending.append(record)
                else:
                    self.filtered_out += 1

    def poll_once(self) -> bool:
        if not self._pending:
            self._read()
        if not self._pending:
            return False
        batch = self._pending[: self.batch_size]
        delivered = self.deliver(batch)
        del self._pending[:delivered]
        return True

    def deliver(self, batch: list[dict[str, Any]]) -> int:
        """Delivers a batch until it succeeds or its retries run out; returns how many of its records are done with."""
        attempt = 0
        remaining = list(batch)
        while True:
            subjects = tuple(str(((r["dynamodb"].get("Keys") or {}).get("pk") or {}).get("S", "")) for r in remaining)
            result, error = self._call(self.function, {"Records": remaining}, len(remaining), self._picked_up, subjects)
            failed_from = 0 if error is not None else self._first_failure(result, remaining)
            if failed_from is None:
                self.delivered += len(remaining)
                return len(batch)
            # Lambda checkpoints before the lowest failed record and retries from there.
            self.delivered += failed_from
            remaining = remaining[failed_from:]
            attempt += 1
            if self.max_retries != -1 and attempt > self.max_retries:
                self._send_to_on_failure(remaining, attempt, error)
                return len(batch)
            if self.wait(retry_delay(attempt, self.poll_interval)):
                # stopping: nothing is checkpointed past the failure, as a Lambda shard would resume there
                return len(batch) - len(remaining)

    def _first_failure(self, result: Any, records: list[dict[str, Any]]) -> int | None:
        """Index of the record Lambda would retry from, or None when the batch succeeded."""
        if not self.report_item_failures or not isinstance(result, dict):
            return None
        failures = result.get("batchItemFailures") or []
        if not failures:
            return None
        sequence = {r["dynamodb"]["SequenceNumber"]: i for i, r in enumerate(records)}
        indexes = []
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if identifier not in sequence:
                return 0  # an empty or unknown identifier fails the whole batch (Lambda's rule)
            indexes.append(sequence[identifier])
        return min(indexes)

    def _send_to_on_failure(self, records: list[dict[str, Any]], attempts: int, error: BaseException | None) -> None:
        """Lambda sends batch metadata (not the records) to a stream's on-failure destination."""
        log.error("%s: %d records failed %d attempts; sent to the on-failure queue", self.name, len(records), attempts)
        if not self.on_failure_url:
            return
        first, last = records[0], records[-1]
        message = {
            "requestContext": {"requestId": str(uuid.uuid4()), "functionArn": self.function.context().invoked_function_arn,
                               "condition": "RetryAttemptsExhausted", "approximateInvokeCount": attempts},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled" if error else None},
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(),
            "DDBStreamBatchInfo": {
                "shardId": next(iter(self._iterators), ""),
                "startSequenceNumber": first["dynamodb"]["SequenceNumber"],
                "endSequenceNumber": last["dynamodb"]["SequenceNumber"],
                "approximateArrivalOfFirstRecord": first["dynamodb"].get("ApproximateCreationDateTime"),
                "approximateArrivalOfLastRecord": last["dynamodb"].get("ApproximateCreationDateTime"),
                "batchSize": len(records),
                "streamArn": self.stream_arn,
            },
        }
        self.clients("sqs").send_message(QueueUrl=self.on_failure_url, MessageBody=json.dumps(message))


# -- SQS ---------------------------------------------------------------------------------------------------
def lambda_sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    attributes = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        attributes[name] = {
            "dataType": value.get("DataType"),
            "stringValue": value.get("StringValue"),
            "binaryValue": base64.b64encode(value["BinaryValue"]).decode() if value.get("BinaryValue") else None,
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": [base64.b64encode(v).decode() for v in value.get("BinaryListValues", [])],
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes") or {},
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


class SqsPump(Pump):
    source = "sqs"

    def __init__(self, function: LocalFunction, event_name: str, properties: Mapping[str, Any], refs: TemplateRefs, clients: Callable[[str], Any],
                 **kwargs: Any) -> None:
        super().__init__(f"pump-{function.spec.logical_id}-{event_name}", **kwargs)
        self.function = function
        self.clients = clients
        props = refs.resolve(dict(properties))
        self.queue_arn: str = props["Queue"]
        self.queue_url = refs.queue_url_for_arn(self.queue_arn)
        self.batch_size = min(10, int(props.get("BatchSize", 10)))
        self.report_item_failures = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
        self.region = refs.resources.region

    def poll_once(self) -> bool:
        sqs = self.clients("sqs")
        messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size, WaitTimeSeconds=0,
                                       AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages", [])
        if not messages:
            return False
        picked_up = time.time()
        records = [lambda_sqs_record(m, self.queue_arn, self.region) for m in messages]
        result, error = self._call(self.function, {"Records": records}, len(records), picked_up, tuple(m["MessageId"] for m in messages))
        if error is not None:
            return True  # nothing deleted: every message comes back after the visibility timeout
        failed: set[str] = set()
        if self.report_item_failures and isinstance(result, dict):
            failed = {str(f.get("itemIdentifier")) for f in result.get("batchItemFailures") or [] if isinstance(f, dict)}
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            sqs.delete_message_batch(QueueUrl=self.queue_url,
                                     Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
        return True


# -- Schedule ----------------------------------------------------------------------------------------------
class SchedulePump(AsyncInvocationPump):
    """EventBridge Scheduler → the function, every `interval` seconds (the template's rate is for AWS; locally it is short)."""

    source = "schedule"

    def __init__(self, function: LocalFunction, event_name: str, properties: Mapping[str, Any], refs: TemplateRefs, clients: Callable[[str], Any],
                 *, interval: float, account_id: str = "123456789012", **kwargs: Any) -> None:
        super().__init__(f"pump-{function.spec.logical_id}-{event_name}", poll_interval=interval, **kwargs)
        self.function = function
        self.clients = clients
        self.region = refs.resources.region
        self.account_id = account_id
        self.schedule_arn = f"arn:aws:scheduler:{self.region}:{account_id}:schedule/default/loraforge-local-{function.spec.logical_id}"
        self.input_template = self._sub(properties.get("Input"))
        # Scheduler invokes asynchronously: its RetryPolicy/DeadLetterConfig cover invocations it cannot make (none here);
        # a raising run follows the function's EventInvokeConfig, as in AWS.
        self._async_config(refs)

    def _sub(self, value: Any) -> str | None:
        text = value.get("Fn::Sub") if isinstance(value, dict) else value
        if text is None:
            return None
        return str(text).replace("${AWS::AccountId}", self.account_id).replace("${AWS::Region}", self.region)

    def event(self, attempt: int = 1) -> Any:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.input_template is None:
            return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.scheduler",
                    "account": self.account_id, "time": now, "region": self.region, "resources": [self.schedule_arn], "detail": {}}
        text = (self.input_template.replace("<aws.scheduler.execution-id>", str(uuid.uuid4()))
                .replace("<aws.scheduler.scheduled-time>", now).replace("<aws.scheduler.schedule-arn>", self.schedule_arn)
                .replace("<aws.scheduler.attempt-number>", str(attempt)))
        return json.loads(text)

    def poll_once(self) -> bool:
        self.fire()
        return False

    def fire(self) -> bool:
        return self.invoke_async(self.event())
