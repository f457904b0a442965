"""Request bodies: bounded, JSON, an object (DESIGN §9 "every request body bounded").

Powertools' request validation middleware runs first on every route; this subclass of it checks
the body's size before anything is decoded or parsed, decodes base64 bodies (API Gateway sets
`isBase64Encoded` for some content types), and parses strictly: invalid UTF-8, invalid JSON,
NaN/Infinity, numbers too long to convert, nesting too deep and non-object bodies are all a 400
INVALID_JSON instead of an exception. The body is parsed as JSON whatever the Content-Type
(`curl -d` sends form encoding by default): the API speaks only JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aws_lambda_powertools.event_handler.middlewares.openapi_validation import OpenAPIRequestValidationMiddleware

from ..models.errors import LoraforgeError, PayloadTooLarge

MAX_BODY_BYTES = 64 * 1024


class InvalidJson(LoraforgeError):
    status = 400
    code = "INVALID_JSON"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _too_large(size: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is {size} bytes; the limit is {MAX_BODY_BYTES} bytes",
                           details={"limit_bytes": MAX_BODY_BYTES})


def check_body_size(event: dict[str, Any]) -> None:
    """Refuse an oversize body from its length alone, before decoding anything."""
    raw = event.get("body")
    if not isinstance(raw, str):
        return
    if event.get("isBase64Encoded") is True:
        if len(raw) > (MAX_BODY_BYTES + 2) // 3 * 4:  # 4 base64 characters carry 3 bytes
            raise _too_large(len(raw) // 4 * 3)
    elif len(raw) > MAX_BODY_BYTES:  # a character is at least one UTF-8 byte
        raise _too_large(len(raw))


def read_json_body(event: dict[str, Any]) -> dict[str, Any] | None:
    """The request body as a JSON object, or None when there is none. Raises PayloadTooLarge / InvalidJson."""
    raw = event.get("body")
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InvalidJson("request body must be JSON text")
    check_body_size(event)
    if event.get("isBase64Encoded") is True:
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidJson("request body is marked base64-encoded but is not valid base64") from exc
    else:
        data = raw.encode("utf-8", "surrogatepass")
    if len(data) > MAX_BODY_BYTES:
        raise _too_large(len(data))
    try:
        parsed = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError and int-too-long are ValueErrors
        raise InvalidJson(f"request body is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(parsed, dict):
        raise InvalidJson(f"request body must be a JSON object, not {type(parsed).__name__}")
    return parsed


class JsonObjectBodyValidation(OpenAPIRequestValidationMiddleware):
    """Powertools' request validation with `read_json_body` in place of its body parsing."""

    def handler(self, app: Any, next_middleware: Any) -> Any:
        # Every route, with a body parameter or not: an oversize body is refused before any work.
        check_body_size(app.current_event.raw_event)
        return super().handler(app, next_middleware)

    def _get_body(self, app: Any) -> dict[str, Any]:
        return read_json_body(app.current_event.raw_event)  # type: ignore[return-value]  # None: "body missing" for pydantic
