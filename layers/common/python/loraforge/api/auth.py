"""Who is calling: the owner is the JWT `sub` that API Gateway's JWT authorizer verified (DESIGN §6).

API Gateway has already checked the token's signature, issuer, audience and expiry before the
function runs; the function only reads the verified claims from the request context. Routes that
have no authorizer (the RunPod and worker hooks, GET /openapi.json) do not use this dependency.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Depends, Request

from ..models.common import is_valid_owner
from ..models.errors import Unauthorized
from ..observability import logger

# OpenAPI: every route that takes `OwnerId` declares this security requirement.
SECURITY_SCHEME_NAME = "jwt"
JWT_SECURITY: list[dict[str, list[str]]] = [{SECURITY_SCHEME_NAME: []}]


def _claims(event: dict[str, Any]) -> dict[str, Any]:
    node: Any = event
    for key in ("requestContext", "authorizer", "jwt", "claims"):
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def owner_from_event(event: dict[str, Any]) -> str:
    """The verified `sub` claim, which must be usable as an owner id (it becomes an S3 key segment)."""
    sub = _claims(event).get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("missing or invalid bearer token: send 'Authorization: Bearer <JWT>' from the configured identity provider")
    if not is_valid_owner(sub):
        raise Unauthorized("the token's subject cannot be used as an owner id (1-128 letters, digits or ._@+-)")
    return sub


def current_owner(request: Request) -> str:
    owner = owner_from_event(request.resolved_event.raw_event)
    logger.append_keys(owner=owner)
    return owner


OwnerId = Annotated[str, Depends(current_owner)]
"""A route parameter of this type receives the caller's owner id, or the request gets 401."""
