"""The local event pumps against moto, with stand-in handlers: what AWS would deliver, with Lambda's batch semantics."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel, EventBridgeModel, SqsModel

from loraforge.local.aws_resources import StackResources, lambda_event_source_filters, load_template
from loraforge.local.lambda_runtime import FunctionSpec, LocalLambdaContext, TemplateRefs, function_specs
from loraforge.local.pumps import DynamoStreamPump, EventBridgePump, SchedulePump, SqsPump


class StandInFunction:
    """A LocalFunction look-alike whose handler the test supplies."""

    def __init__(self, spec: FunctionSpec, handler: Callable[[Any], Any] | None = None) -> None:
        self.spec = spec
        self.handler = handler or (lambda event: None)
        self.events: list[Any] = []

    def invoke(self, event: Any) -> Any:
        self.events.append(json.loads(json.dumps(event)))
        return self.handler(event)

    def context(self) -> LocalLambdaContext:
        return LocalLambdaContext(function_name=self.spec.logical_id, timeout_seconds=self.spec.timeout)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture
def refs(aws_stack: StackResources, template: dict[str, Any]) -> TemplateRefs:
    return TemplateRefs(aws_stack, template)


def clients(service: str) -> Any:
    return boto3.client(service)


def stream_pump(
    template: dict[str, Any], refs: TemplateRefs, function_id: str, handler: Callable[[Any], Any] | None = None
) -> tuple[DynamoStreamPump, StandInFunction]:
    spec = function_specs(template)[function_id]
    (name, event), = ((n, e) for n, e in spec.events.items() if e["Type"] == "DynamoDB")
    function = StandInFunction(spec, handler)
    pump = DynamoStreamPump(function, name, event["Properties"], refs, clients, poll_interval=0.01)  # type: ignore[arg-type]
    pump.setup()
    return pump, function


def put_job(table: str, job_id: str, status: str, **extra: str) -> None:
    item = {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "META"}, "status": {"S": status}, **{k: {"S": v} for k, v in extra.items()}}
    boto3.client("dynamodb").put_item(TableName=table, Item=item)


def drain(pump: DynamoStreamPump) -> None:
    while pump.poll_once():
        pass


def test_dispatch_pump_applies_the_templates_filter(aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs) -> None:
    # Given the dispatch function's stream source, read from template.yaml
    pump, function = stream_pump(template, refs, "DispatchFunction")
    assert [p.get_pattern() for p in pump.patterns] == lambda_event_source_filters()["DispatchFunction"]

    # When a queued job, a running job, a job event item and a dataset are written
    put_job(aws_stack.table, "job_a", "queued")
    put_job(aws_stack.table, "job_b", "running")
    boto3.client("dynamodb").put_item(TableName=aws_stack.table, Item={"pk": {"S": "JOB#job_a"}, "sk": {"S": "EVT#1"}, "status": {"S": "queued"}})
    boto3.client("dynamodb").put_item(TableName=aws_stack.table, Item={"pk": {"S": "DS#ds_a"}, "sk": {"S": "META"}, "status": {"S": "queued"}})
    drain(pump)

    # Then only the queued job's META record reaches dispatch, in Lambda's stream record shape
    delivered = [r for event in function.events for r in event["Records"]]
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in delivered] == ["JOB#job_a"]
    parsed = DynamoDBStreamModel(**function.events[0])
    assert parsed.Records[0].eventSourceARN == aws_stack.table_stream_arn
    assert isinstance(delivered[0]["dynamodb"]["ApproximateCreationDateTime"], int)
    assert pump.filtered_out == 3


def test_notify_pump_sees_job_and_dataset_meta_changes(aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs) -> None:
    pump, function = stream_pump(template, refs, "NotifyFunction")

    put_job(aws_stack.table, "job_a", "queued")
    put_job(aws_stack.table, "job_a", "running")
    boto3.client("dynamodb").put_item(TableName=aws_stack.table, Item={"pk": {"S": "DS#ds_a"}, "sk": {"S": "META"}, "status": {"S": "invalid"}})
    boto3.client("dynamodb").put_item(TableName=aws_stack.table, Item={"pk": {"S": "CAP#global"}, "sk": {"S": "META"}})
    drain(pump)

    delivered = [(r["eventName"], r["dynamodb"]["NewImage"]["pk"]["S"]) for e in function.events for r in e["Records"]]
    assert delivered == [("INSERT", "JOB#job_a"), ("MODIFY", "JOB#job_a"), ("INSERT", "DS#ds_a")]


def test_partial_batch_failure_is_retried_from_the_first_failed_record(
    aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs
) -> None:
    # Given a handler that reports the second record of its first batch as failed
    calls: list[list[str]] = []

    def handler(event: dict[str, Any]) -> dict[str, Any]:
        records = event["Records"]
        calls.append([r["dynamodb"]["Keys"]["pk"]["S"] for r in records])
        if len(calls) == 1:
            return {"batchItemFailures": [{"itemIdentifier": records[1]["dynamodb"]["SequenceNumber"]}]}
        return {"batchItemFailures": []}

    pump, _ = stream_pump(template, refs, "DispatchFunction", handler)
    for job in ("job_1", "job_2", "job_3"):
        put_job(aws_stack.table, job, "queued")

    # When the pump delivers
    drain(pump)

    # Then the retry starts at the failed record and includes the ones after it, never the one before
    assert calls == [["JOB#job_1", "JOB#job_2", "JOB#job_3"], ["JOB#job_2", "JOB#job_3"]]


def test_exhausted_retries_go_to_the_on_failure_queue_and_the_shard_moves_on(
    aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs
) -> None:
    # Given a handler that always raises for job_poison
    def handler(event: dict[str, Any]) -> dict[str, Any]:
        if any(r["dynamodb"]["Keys"]["pk"]["S"] == "JOB#job_poison" for r in event["Records"]):
            raise RuntimeError("boom")
        return {"batchItemFailures": []}

    pump, function = stream_pump(template, refs, "DispatchFunction", handler)
    put_job(aws_stack.table, "job_poison", "queued")
    drain(pump)
    put_job(aws_stack.table, "job_next", "queued")
    drain(pump)

    # Then it was tried 1 + MaximumRetryAttempts times, its batch info is on DispatchFailureQueue, and the next job still arrives
    assert len([e for e in function.events if e["Records"][0]["dynamodb"]["Keys"]["pk"]["S"] == "JOB#job_poison"]) == 1 + pump.max_retries
    messages = boto3.client("sqs").receive_message(QueueUrl=aws_stack.queues["DispatchFailureQueue"], MaxNumberOfMessages=10)["Messages"]
    info = json.loads(messages[0]["Body"])
    assert info["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert info["DDBStreamBatchInfo"]["batchSize"] == 1 and info["DDBStreamBatchInfo"]["streamArn"] == aws_stack.table_stream_arn
    assert function.events[-1]["Records"][0]["dynamodb"]["Keys"]["pk"]["S"] == "JOB#job_next"


def test_s3_objects_reach_ingest_through_eventbridge_with_the_templates_pattern(
    aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs
) -> None:
    # Given the ingest function's EventBridge rule, captured to SQS
    spec = function_specs(template)["IngestFunction"]
    function = StandInFunction(spec)
    pump = EventBridgePump(function, "ObjectCreated", spec.events["ObjectCreated"]["Properties"], refs, clients, poll_interval=0.01)  # type: ignore[arg-type]
    pump.setup()

    # When a drop zip, an API upload and an unrelated key land in the bucket
    s3 = boto3.client("s3")
    s3.put_object(Bucket=aws_stack.bucket, Key="incoming/alice/my-set.zip", Body=b"zip")
    s3.put_object(Bucket=aws_stack.bucket, Key="datasets/alice/ds_1/dataset.zip", Body=b"zip")
    s3.put_object(Bucket=aws_stack.bucket, Key="jobs/alice/job_1/final/x.safetensors", Body=b"x")
    while pump.poll_once():
        pass

    # Then ingest got one EventBridge "Object Created" event per matching key, as moto produced them
    events = [EventBridgeModel(**e) for e in function.events]
    assert sorted(e.detail["object"]["key"] for e in events) == sorted(["incoming/alice/my-set.zip", "datasets/alice/ds_1/dataset.zip"])
    assert {e.detail_type for e in events} == {"Object Created"} and {e.source for e in events} == {"aws.s3"}


def test_an_ingest_event_failing_every_retry_lands_in_the_on_failure_queue(
    aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs
) -> None:
    # Given an ingest handler that raises on every event
    spec = function_specs(template)["IngestFunction"]

    def explode(event: Any) -> None:
        raise ValueError("poison")

    function = StandInFunction(spec, explode)
    pump = EventBridgePump(function, "ObjectCreated", spec.events["ObjectCreated"]["Properties"], refs, clients, poll_interval=0.01)  # type: ignore[arg-type]

    # When an event is delivered
    delivered = pump.deliver({"id": "evt-1", "detail": {}})

    # Then it was invoked 1 + EventInvokeConfig.MaximumRetryAttempts times and Lambda's failure record is on IngestDLQ
    assert delivered is False
    assert len(function.events) == 1 + int(spec.event_invoke_config["MaximumRetryAttempts"])
    (message,) = boto3.client("sqs").receive_message(QueueUrl=aws_stack.queues["IngestDLQ"])["Messages"]
    record = json.loads(message["Body"])
    assert record["requestPayload"]["id"] == "evt-1"
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["responsePayload"] == {"errorType": "ValueError", "errorMessage": "poison"}


def test_sqs_pump_deletes_only_the_messages_that_succeeded(aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs) -> None:
    # Given three webhook deliveries and a handler failing the one for "b"
    def handler(event: dict[str, Any]) -> dict[str, Any]:
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in event["Records"] if r["body"] == "b"]}

    spec = function_specs(template)["WebhookDeliveryFunction"]
    function = StandInFunction(spec, handler)
    pump = SqsPump(function, "Delivery", spec.events["Delivery"]["Properties"], refs, clients, poll_interval=0.01)  # type: ignore[arg-type]
    sqs = boto3.client("sqs")
    url = aws_stack.queues["WebhookDeliveryQueue"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "0"})
    for body in ("a", "b", "c"):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes={"attempt": {"DataType": "Number", "StringValue": "1"}})

    # When the pump runs one batch
    assert pump.poll_once() is True

    # Then the handler got an SQS event and only "b" is left on the queue
    parsed = SqsModel(**function.events[0])
    assert sorted(r.body for r in parsed.Records) == ["a", "b", "c"]
    assert parsed.Records[0].messageAttributes["attempt"].stringValue == "1"
    left = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in left] == ["b"]


def test_schedule_pump_sends_the_templates_input(aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs) -> None:
    spec = function_specs(template)["ReconcileFunction"]
    function = StandInFunction(spec)
    pump = SchedulePump(function, "Schedule", spec.events["Schedule"]["Properties"], refs, clients, interval=1.0)  # type: ignore[arg-type]

    assert pump.fire() is True

    event = EventBridgeModel(**function.events[0])
    assert event.source == "aws.scheduler" and event.detail_type == "Scheduled Event"
    assert event.detail == {"attempt": "1"}
    assert "<aws." not in json.dumps(function.events[0])


def test_a_failing_reconcile_run_follows_the_functions_event_invoke_config(
    aws_stack: StackResources, template: dict[str, Any], refs: TemplateRefs
) -> None:
    # Given a reconcile handler that raises (the schedule invokes it asynchronously, as Scheduler does)
    spec = function_specs(template)["ReconcileFunction"]

    def explode(event: Any) -> None:
        raise RuntimeError("DynamoDB throttled")

    function = StandInFunction(spec, explode)
    pump = SchedulePump(function, "Schedule", spec.events["Schedule"]["Properties"], refs, clients, interval=0.01)  # type: ignore[arg-type]

    # When the schedule fires
    handled = pump.fire()

    # Then it ran 1 + EventInvokeConfig.MaximumRetryAttempts times (0 retries: the next run is the retry), and Lambda's
    # failure record, not the bare event, is on ReconcileDLQ
    assert handled is False
    assert len(function.events) == 1 + int(spec.event_invoke_config["MaximumRetryAttempts"])
    (message,) = boto3.client("sqs").receive_message(QueueUrl=aws_stack.queues["ReconcileDLQ"])["Messages"]
    record = json.loads(message["Body"])
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["responsePayload"] == {"errorType": "RuntimeError", "errorMessage": "DynamoDB throttled"}
