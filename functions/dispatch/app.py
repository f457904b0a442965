"""DispatchFunction: DynamoDB stream records of jobs that became `queued` -> claimed and started on RunPod.

Thin: powertools BatchProcessor with partial failures; each record names a job, `dispatch_job` does
the rest (it re-reads the job: the stream image may be stale). Expected outcomes (already claimed,
not due, no free slot, RunPod refused and the job went back to the queue) are successes; only an
unexpected error fails a record, so the stream retries just that one.
"""

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from loraforge.logic.dispatch import dispatch_job
from loraforge.observability import logger, metrics, tracer

processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
# One dispatch's worst case (RunPod retries and timeouts) with room to record its outcome. A job claimed by
# an invocation that then times out would wait for RunPod's ttl, so a record left without this much time is
# failed unclaimed instead, and the stream delivers it again.
MIN_REMAINING_MS = 25_000


class OutOfTime(Exception):
    pass


@tracer.capture_method
def record_handler(record: DynamoDBRecord, lambda_context: LambdaContext | None = None) -> str:
    image = record.dynamodb.new_image if record.dynamodb else {}
    job_id = image.get("id")
    if not isinstance(job_id, str) or image.get("sk") != "META" or not str(image.get("pk", "")).startswith("JOB#"):
        logger.warning("stream record is not a job item; skipped", extra={"event_id": record.event_id})
        return "skipped"
    if lambda_context is not None and lambda_context.get_remaining_time_in_millis() < MIN_REMAINING_MS:
        raise OutOfTime(f"{job_id} left for the next delivery: less than {MIN_REMAINING_MS} ms left in this invocation")
    result = dispatch_job(job_id)
    logger.info("dispatch", extra={"job_id": job_id, "outcome": result.outcome, "detail": result.detail})
    return result.outcome


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
