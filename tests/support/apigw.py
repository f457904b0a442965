"""API Gateway HTTP API (payload v2) events for the API function, built from the samples in `events/`.

`api_event("GET", "/v1/jobs", owner="user-a", query={"limit": "5"})` starts from
events/apigw_v2_get_job.json (or apigw_v2_post_job.json when there is a body) and rewrites what a request
changes: method, path, query string, headers, body, the JWT authorizer's claims and the request id.
`owner=None` drops the authorizer context (what a route without an authorizer receives).
`call_api(...)` sends such an event through the real `functions.api.app.lambda_handler`.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from tests.support.events import load_event

OWNER_A = "user-a"
OWNER_B = "user-b"


def api_event(
    method: str,
    path: str,
    *,
    owner: str | None = OWNER_A,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    base64_body: bool = False,
    template: str | None = None,
) -> dict[str, Any]:
    """`body`: a dict/list is JSON-encoded; str/bytes are sent as they are (bytes base64-encoded)."""
    event = load_event(template or ("apigw_v2_post_job" if body is not None else "apigw_v2_get_job"))
    event["rawPath"] = path
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["requestContext"]["requestId"] = uuid.uuid4().hex[:16] + "="
    event["pathParameters"] = {"proxy": path.removeprefix("/v1/")}
    event["rawQueryString"] = urlencode(query or {}, quote_via=quote)
    if query:
        event["queryStringParameters"] = dict(query)
    else:
        event.pop("queryStringParameters", None)
    lowered = {k.lower(): v for k, v in event["headers"].items() if k.lower() not in ("content-type", "idempotency-key", "content-length")}
    lowered |= {k.lower(): v for k, v in (headers or {}).items()}
    event["headers"] = lowered
    if owner is None:
        event["requestContext"].pop("authorizer", None)
        event["headers"].pop("authorization", None)
    else:
        claims = event["requestContext"].setdefault("authorizer", {}).setdefault("jwt", {}).setdefault("claims", {})
        claims["sub"] = owner
        claims["username"] = owner
    event.pop("body", None)
    event["isBase64Encoded"] = False
    if body is not None:
        raw = json.dumps(body).encode() if isinstance(body, dict | list) else body if isinstance(body, bytes) else str(body).encode()
        if base64_body or isinstance(body, bytes):
            event["body"] = base64.b64encode(raw).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = raw.decode()
        event["headers"].setdefault("content-type", "application/json")
        event["headers"]["content-length"] = str(len(raw))
    return event


@dataclass
class ApiResponse:
    status: int
    json: Any
    headers: dict[str, str]
    raw: dict[str, Any]

    @property
    def error_code(self) -> str | None:
        error = self.json.get("error") if isinstance(self.json, dict) else None  # a job's own `error` field may be null
        return error.get("code") if isinstance(error, dict) else None


def invoke(event: dict[str, Any], context: Any) -> ApiResponse:
    from functions.api.app import lambda_handler

    raw = lambda_handler(event, context)
    body = raw.get("body") or ""
    if raw.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = body
    return ApiResponse(status=raw["statusCode"], json=parsed, headers=raw.get("headers") or {}, raw=raw)


def call_api(context: Any, method: str, path: str, **kwargs: Any) -> ApiResponse:
    return invoke(api_event(method, path, **kwargs), context)
