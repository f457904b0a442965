"""POST /v1/estimates."""

from __future__ import annotations

from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from ...logic.estimate_job import EstimateRequest, EstimateResult, estimate_job
from ..auth import JWT_SECURITY, OwnerId
from ..schemas import responses

router = APIGatewayHttpRouter()


@router.post("/v1/estimates", summary="Dry run of a job body: time, cost, VRAM and warnings", tags=["jobs"],
             description="The same checks as POST /v1/jobs; nothing is created. dataset_id is optional: without it, "
                         "image_count (if given) stands in for the dataset's size.",
             security=JWT_SECURITY, responses=responses(200, 400, 401, 404, 409, 413, 422))
def post_estimate(owner: OwnerId, body: Annotated[EstimateRequest, Body(embed=False)]) -> EstimateResult:
    return estimate_job(owner, body)
