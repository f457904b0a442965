"""IngestFunction: S3 "Object Created" (via EventBridge) -> a validated dataset, and a queued job for drop-to-train.

Thin: parse the event with powertools' S3-via-EventBridge model, resolve the key (`object_key_of_event`, the ONE
place keys are decoded), call `ingest_object`. A problem with the upload itself never raises (the dataset becomes
`invalid` with reason codes); anything else (S3/DynamoDB errors, a malformed event) raises, so the
invocation is retried and finally dead-lettered to IngestDLQ, with a log line saying why.
"""

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from loraforge.logic.ingest_dataset import ingest_object, object_key_of_event
from loraforge.observability import logger, metrics, tracer


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        parsed = parse(event=event, model=S3EventNotificationEventBridgeModel)
    except ValidationError:
        metrics.add_metric(name="IngestFailed", unit=MetricUnit.Count, value=1)
        logger.exception("malformed S3 Object Created event: it cannot be processed and goes to IngestDLQ after the retries")
        raise
    obj = parsed.detail.object
    outcome = ingest_object(
        bucket=parsed.detail.bucket.name,
        key=object_key_of_event(obj.key),
        version_id=obj.version_id,
        etag=obj.etag or None,
        size=int(obj.size) if obj.size is not None else None,
        lambda_context=context,
    )
    return outcome.model_dump(mode="json")
