"""One error shape for every 4xx (and the 500): `{"error": {"code", "message", "details"}}` (DESIGN §6).

Registered on the resolver by `register_error_handlers`. Powertools' own answers (its validation
422 `{"statusCode", "detail"}`, its 404 `{"statusCode", "message"}`) are remapped here, so a client
parses one shape whatever went wrong. Powertools has no 405: its not-found handler tells a path that
exists with another method (405 METHOD_NOT_ALLOWED and an `Allow` header, from the route table alone)
from a path that does not (404 ROUTE_NOT_FOUND).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestUnsupportedContentType, RequestValidationError

from ..models.errors import LoraforgeError
from ..observability import logger

# A path id of the wrong shape cannot name a resource: it is answered like a missing one.
PATH_PARAM_NOT_FOUND = {"job_id": ("JOB_NOT_FOUND", "job"), "dataset_id": ("DATASET_NOT_FOUND", "dataset")}
# Parameters whose problems have their own code (clients branch on them) and, where pydantic's is
# not one a person can act on, their own message.
PARAM_ERRORS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("query", "limit"): ("INVALID_LIMIT", "limit must be an integer from 1 to 100"),
    ("query", "cursor"): ("INVALID_CURSOR", "cursor is not one this API returned: pass next_cursor from the previous page"),
    ("query", "status"): ("INVALID_STATUS", None),
    ("query", "after"): ("INVALID_AFTER", "after must be an event seq: an integer from 0"),
    ("query", "kind"): ("INVALID_KIND", None),
    ("header", "idempotency-key"): ("INVALID_IDEMPOTENCY_KEY", "Idempotency-Key must be 1-255 printable ASCII characters without spaces"),
}
MAX_DETAIL_ITEMS = 20
# A powertools route parameter (<job_id>), shown to clients as OpenAPI writes it ({job_id}).
_ROUTE_PARAM = re.compile(r"<(\w+)>")


def json_safe(value: Any, depth: int = 0) -> Any:
    """Details come from pydantic and from our own errors: keep only what JSON can carry, bounded."""
    if depth > 8:
        return "…"
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, depth + 1) for v in list(value)[:50]]
    return str(value)


def error_response(status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body={"error": {"code": code, "message": message, "details": json_safe(details)}},
        headers=headers,
    )


def _problems(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic/powertools errors as `{loc, type, msg}`; the offending input is left out (it may be huge or secret)."""
    out = []
    for err in list(errors)[:MAX_DETAIL_ITEMS]:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "type": str(err.get("type", "invalid")), "msg": str(err.get("msg", "invalid value"))})
    return out


def _describe(problem: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in problem["loc"]) or "request"
    return f"{where}: {problem['msg']}"


def validation_response(exc: RequestValidationError) -> Response:
    problems = _problems(exc.errors())
    if not problems:
        return error_response(422, "INVALID_INPUT", "the request is not valid")
    for problem, err in zip(problems, exc.errors(), strict=False):
        loc = problem["loc"]
        if len(loc) >= 2 and loc[0] == "path" and loc[1] in PATH_PARAM_NOT_FOUND:
            code, noun = PATH_PARAM_NOT_FOUND[loc[1]]
            shown = err.get("input") if isinstance(err.get("input"), str) else ""
            return error_response(404, code, f"{noun} {shown[:64]} not found" if shown else f"{noun} not found")
    message = _describe(problems[0]) + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
    params = {tuple(p["loc"][:2]) for p in problems}
    if len(params) == 1 and (param := params.pop()) in PARAM_ERRORS:
        code, own_message = PARAM_ERRORS[param]  # type: ignore[index]
        return error_response(422, code, own_message or message, problems)
    # Powertools' own body parsing reports bad JSON this way; api.body replaces it, this keeps the shape if it ever runs.
    if any(p["type"] == "json_invalid" for p in problems):
        return error_response(400, "INVALID_JSON", "the request body is not valid JSON", problems)
    return error_response(422, "INVALID_INPUT", message, problems)


def allowed_methods(app: APIGatewayHttpResolver, path: str) -> tuple[list[str], str | None]:
    """The methods the resolver's routes accept on `path`, sorted, and the first matching route's path as OpenAPI
    writes it (/v1/jobs/{job_id}); ([], None) when no route has this path.

    Matched exactly as powertools dispatches (static routes, then dynamic ones, each route's compiled rule), so the
    list cannot drift from the routes. Only the route table is read: nothing about any owner's resources.
    """
    # Powertools keeps its route table in these two lists and offers no public accessor for them.
    matching = [route for route in app._static_routes + app._dynamic_routes if route.rule.match(path)]
    if not matching:
        return [], None
    return sorted({route.method for route in matching}), _ROUTE_PARAM.sub(r"{\1}", matching[0].path)


def is_cors_preflight(method: str, headers: Mapping[str, str] | None) -> bool:
    """A browser's CORS preflight: OPTIONS with Origin and Access-Control-Request-Method (it never carries a token)."""
    names = {name.lower() for name in (headers or {})}
    return method.upper() == "OPTIONS" and {"origin", "access-control-request-method"} <= names


def method_not_allowed_response(method: str, path_template: str, methods: list[str]) -> Response:
    accepted = ", ".join(methods)
    return error_response(
        405, "METHOD_NOT_ALLOWED",
        f"{path_template} does not take {method[:16]}: it accepts {accepted} (the routes are listed in GET /openapi.json)",
        {"method": method[:16], "allowed_methods": methods},
        headers={"Allow": accepted},
    )


def _request_id(app: APIGatewayHttpResolver) -> str | None:
    context = app.current_event.raw_event.get("requestContext")
    request_id = context.get("requestId") if isinstance(context, dict) else None
    return request_id if isinstance(request_id, str) else None


def register_error_handlers(app: APIGatewayHttpResolver) -> None:
    @app.exception_handler(LoraforgeError)
    def _typed_error(exc: LoraforgeError) -> Response:
        if exc.status >= 500:
            logger.exception("server error", extra={"code": exc.code})
        else:
            logger.info("request refused", extra={"status": exc.status, "code": exc.code})
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    def _invalid_request(exc: RequestValidationError) -> Response:
        response = validation_response(exc)
        logger.info("request refused", extra={"status": response.status_code, "errors": _problems(exc.errors())[:5]})
        return response

    # Only powertools' own body parsing raises this (api.body reads every body as JSON); kept for the shape's sake.
    @app.exception_handler(RequestUnsupportedContentType)
    def _unsupported_content_type(exc: RequestUnsupportedContentType) -> Response:
        return error_response(415, "UNSUPPORTED_MEDIA_TYPE", "send the request body as JSON (Content-Type: application/json)")

    @app.not_found
    def _no_route(exc: NotFoundError) -> Response:
        # Decided before any handler or lookup runs: a 405 says only what the published route table says.
        event = app.current_event
        if is_cors_preflight(event.http_method, event.headers):
            # template.yaml routes OPTIONS /v1/{proxy+} here without the JWT authorizer (browsers send no token on a
            # preflight); API Gateway replaces CORS headers with its CorsConfiguration, so an empty 2xx is the answer.
            return Response(status_code=204, content_type=None, body="")
        methods, path_template = allowed_methods(app, app._remove_prefix(event.path))
        if path_template is not None:
            logger.info("request refused", extra={"status": 405, "code": "METHOD_NOT_ALLOWED", "allowed_methods": methods})
            return method_not_allowed_response(event.http_method.upper(), path_template, methods)
        return error_response(
            404, "ROUTE_NOT_FOUND",
            f"no route {event.http_method} {event.path[:200]}: the routes are listed in GET /openapi.json",
        )

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # Never shown to the client: the stack goes to the log, the client gets the request id to quote.
        request_id = _request_id(app)
        logger.exception("unexpected error", extra={"request_id": request_id})
        return error_response(500, "INTERNAL", "internal error: please retry; if it persists, report the request id",
                              {"request_id": request_id})
