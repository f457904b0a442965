"""NotifyFunction: job and dataset changes on the jobs table's stream -> SNS email, EventBridge event, user webhook.

Partial batch responses (ReportBatchItemFailures): a failed record is retried from its position,
and every effect already performed for it is skipped by idempotency (loraforge.logic.notify).
"""

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from loraforge.logic.notify import StreamNotifier, default_notify_ports
from loraforge.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    notifier = StreamNotifier(default_notify_ports(lambda_context=context))

    def record_handler(record: DynamoDBRecord) -> list[str]:
        return notifier.handle(record.raw_event)

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
