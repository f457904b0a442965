"""The API's resolver: routers, error mapping, bounded JSON bodies and GET /openapi.json.

`functions/api/app.py` stacks the powertools decorators and calls `app.resolve`.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types

from ..public_api import request_base_url, serving_request_from
from .body import JsonObjectBodyValidation
from .errors import register_error_handlers

# The routers the app includes, by module name under loraforge.api.routers (each exposes `router`).
# "hooks" (the RunPod and worker callbacks, which have no authorizer) is added here by its owner.
ROUTER_MODULES: tuple[str, ...] = (
    "presets",
    "estimates",
    "datasets",
    "jobs",
    "webhook_secret",
    "hooks",
)


def build_app() -> APIGatewayHttpResolver:
    app = APIGatewayHttpResolver(enable_validation=True)
    # Powertools' request validation runs before any middleware; its subclass bounds and parses the body first.
    app._request_validation_middleware = JsonObjectBodyValidation()
    for name in ROUTER_MODULES:
        app.include_router(importlib.import_module(f"{__package__}.routers.{name}").router)
    register_error_handlers(app)
    app.use(middlewares=[_calls_back_to_this_api])

    @app.get("/openapi.json", include_in_schema=False)
    def get_openapi():  # no return annotation: it would become a response model
        # No authorizer on this route (template.yaml); it is the same document as the committed openapi.json.
        return Response(status_code=200, content_type=content_types.APPLICATION_JSON, body=openapi_document_text())

    return app


def _calls_back_to_this_api(app: APIGatewayHttpResolver, next_middleware: Any) -> Any:
    """Jobs this request starts call back to the API it came through (the function has no PUBLIC_API_URL: see public_api)."""
    context = app.current_event.request_context
    with serving_request_from(request_base_url(context.domain_name, context.stage)):
        return next_middleware(app)


app = build_app()


@cache
def openapi_document_text() -> str:
    from .openapi import openapi_document  # generating the document is only needed by this route and `make openapi`

    return openapi_document(app)


def openapi_document_dict() -> dict[str, Any]:
    import json

    return json.loads(openapi_document_text())
