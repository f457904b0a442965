"""WebhookDeliveryFunction: one signed POST per WebhookDeliveryQueue message; failures come back later, then the DLQ."""

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from loraforge.logic.deliver_webhook import DeliveryOutcome, default_delivery_ports, deliver_webhook
from loraforge.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.SQS)


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    ports = default_delivery_ports(lambda_context=context)

    def record_handler(record: SQSRecord) -> DeliveryOutcome:
        return deliver_webhook(record.body, ports, remaining_ms=context.get_remaining_time_in_millis)

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
