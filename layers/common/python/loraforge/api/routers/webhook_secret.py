"""GET /v1/webhook-secret."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.router import APIGatewayHttpRouter

from ...logic.webhook_secret import webhook_secret
from ..auth import JWT_SECURITY, OwnerId
from ..schemas import WebhookSecret, responses

router = APIGatewayHttpRouter()


@router.get("/v1/webhook-secret", summary="Your secret for verifying loraforge's job webhooks (Standard Webhooks)",
            tags=["webhooks"], security=JWT_SECURITY, responses=responses(200, 401))
def get_webhook_secret(owner: OwnerId) -> WebhookSecret:
    return WebhookSecret(secret=webhook_secret(owner))
