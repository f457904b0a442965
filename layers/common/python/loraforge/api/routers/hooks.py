"""The two callbacks that have no authorizer (DESIGN §6): RunPod's completion webhook and the worker's events.

Both authenticate in the handler: the RunPod hook by the HMAC token in its path (RunPod signs
nothing), the worker hook by a Standard Webhooks signature with the per-job secret. Both answer
200 to every authentic delivery that changes nothing, so the sender stops retrying.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from aws_lambda_powertools.event_handler.openapi.params import Path
from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from ...logic.hook_reply import HookReply
from ...models.errors import InvalidInput
from ..body import check_body_size, read_json_body
from ..schemas import JOB_ID_PATTERN, error_responses

router = APIGatewayHttpRouter()
TAGS = ["hooks"]

HookJobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The loraforge job id")]
HookToken = Annotated[str, Path(min_length=1, max_length=128, description="HMAC of the job id (from the webhook URL given to RunPod)")]


@router.post("/v1/hooks/runpod/<job>/<token>", summary="RunPod completion webhook", tags=TAGS,
             description="Called by RunPod when a run ends. The token in the path is checked in constant time; a final "
                         "status is confirmed with RunPod's GET /status before it is applied. Stale or duplicate "
                         "deliveries get 200 with status=ignored.",
             responses=error_responses(400, 401, 404, 413, 422))
def runpod_hook(job: HookJobId, token: HookToken) -> HookReply:
    from ...logic.apply_runpod_webhook import apply_runpod_webhook  # the RunPod client stays off the other routes' path

    return apply_runpod_webhook(job, token, read_json_body(router.current_event.raw_event))


@router.post("/v1/hooks/worker/<job>", summary="Signed worker events", tags=TAGS,
             description="Progress, checkpoint, sample, log and end-of-run events from the worker, signed per the Standard "
                         "Webhooks spec with the per-job secret (webhook-id, webhook-timestamp, webhook-signature; 5-minute "
                         "tolerance). 409 DUPLICATE_RUN tells a second run of the same dispatch to stop before training.",
             responses=error_responses(400, 401, 404, 409, 413, 422))
def worker_hook(job: HookJobId) -> HookReply:
    from ...logic.apply_worker_event import apply_worker_event

    event = router.current_event.raw_event
    check_body_size(event)
    return apply_worker_event(job, router.current_event.headers, _raw_body(event))


def _raw_body(event: dict) -> bytes:
    """The bytes the worker signed (API Gateway may base64-encode them)."""
    raw = event.get("body") or ""
    if event.get("isBase64Encoded") is True:
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("request body is marked base64-encoded but is not valid base64", code="INVALID_JSON") from exc
    return raw.encode("utf-8")
