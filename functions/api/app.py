"""ApiFunction: the HTTP API behind API Gateway (DESIGN §6). Routing, validation and errors live in loraforge.api."""

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from loraforge.api.resolver import app
from loraforge.observability import logger, metrics, tracer


# log_event stays off and capture_response is off: events carry tokens' claims, responses carry presigned URLs and secrets.
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
