"""ReconcileFunction (EventBridge Scheduler): settles what webhooks and worker events missed, drains the queue.

Thin: parse the scheduled event, call `reconcile` (bounded work per run), return its report.
"""

from typing import Any

from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from loraforge.logic.reconcile import reconcile
from loraforge.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_parser(model=EventBridgeModel)
def lambda_handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(schedule_time=event.time.isoformat())
    report = reconcile(seconds_left=lambda: context.get_remaining_time_in_millis() / 1000)
    return report.__dict__
