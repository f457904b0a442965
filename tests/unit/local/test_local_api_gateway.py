"""The local API adapter plays API Gateway: routes and authorizers from template.yaml, payload v2 events, JWT claims."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventV2Model

from loraforge.local.api_server import LocalApiGateway, LocalApiServer, cors_from_template, http_response, routes_from_template
from loraforge.local.auth import LocalIssuer
from loraforge.local.aws_resources import load_template


class RecordingFunction:
    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.result = result if result is not None else {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"ok": true}'}
        self.error = error

    def __call__(self, event: dict[str, Any]) -> Any:
        self.events.append(event)
        if self.error:
            raise self.error
        return self.result


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer()


def gateway(template: dict[str, Any], issuer: LocalIssuer, function: RecordingFunction) -> LocalApiGateway:
    return LocalApiGateway(function, routes_from_template(template), issuer, cors_from_template(template))


def test_authorized_request_becomes_a_v2_event_with_the_token_subject(template: dict[str, Any], issuer: LocalIssuer) -> None:
    # Given a token issued for alice
    function = RecordingFunction()
    api = gateway(template, issuer, function)
    token = issuer.issue("alice")

    # When she lists her jobs with a query string
    status, _, body = api.handle("GET", "/v1/jobs?status=running&limit=5", [("Authorization", f"Bearer {token}"), ("Host", "127.0.0.1:8000")], b"")

    # Then the API function gets a payload v2 event for the greedy route, with her sub as the verified claim
    assert status == 200 and json.loads(body) == {"ok": True}
    (event,) = function.events
    parsed = APIGatewayProxyEventV2Model(**event)
    assert parsed.routeKey == "ANY /v1/{proxy+}"
    assert parsed.rawPath == "/v1/jobs"
    assert parsed.queryStringParameters == {"status": "running", "limit": "5"}
    assert parsed.pathParameters == {"proxy": "jobs"}
    assert event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] == "alice"
    assert event["requestContext"]["http"]["method"] == "GET"
    assert event["headers"]["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-jwt", "Bearer a.b.c"])
def test_missing_or_bad_token_is_refused_before_the_function(template: dict[str, Any], issuer: LocalIssuer, authorization: str | None) -> None:
    # Given a request without a valid bearer token
    function = RecordingFunction()
    api = gateway(template, issuer, function)
    headers = [("Authorization", authorization)] if authorization else []

    # When it reaches an authorized route
    status, response_headers, body = api.handle("GET", "/v1/jobs", headers, b"")

    # Then API Gateway's own 401 answers and the function never runs
    assert status == 401
    assert json.loads(body) == {"message": "Unauthorized"}
    assert function.events == []
    assert any(name.lower() == "www-authenticate" for name, _ in response_headers)


def test_a_token_from_another_stack_is_refused(template: dict[str, Any], issuer: LocalIssuer) -> None:
    # Given a token signed by an earlier `local up` (another key)
    stale = LocalIssuer().issue("alice")
    function = RecordingFunction()

    # When it is used
    status, _, _ = gateway(template, issuer, function).handle("GET", "/v1/jobs", [("Authorization", f"Bearer {stale}")], b"")

    # Then it is refused
    assert status == 401 and function.events == []


def test_expired_token_is_refused(template: dict[str, Any]) -> None:
    # Given a token issued 31 days ago
    key = b"k" * 32
    old = LocalIssuer(key, now=1_000_000).issue("alice")

    # When it is checked now
    claims = LocalIssuer(key, now=1_000_000 + 31 * 24 * 3600).verify(old)

    # Then it is not valid any more
    assert claims is None


def test_hook_routes_need_no_token_and_get_their_path_parameters(template: dict[str, Any], issuer: LocalIssuer) -> None:
    # Given the RunPod webhook route (Auth: NONE in the template)
    function = RecordingFunction()
    api = gateway(template, issuer, function)

    # When RunPod posts to it without any Authorization header
    status, _, _ = api.handle("POST", "/v1/hooks/runpod/job_abc/tok123", [("Content-Type", "application/json")], b'{"id": "rp-1"}')

    # Then the function gets the specific route key, its path parameters, the body, and no authorizer context
    assert status == 200
    (event,) = function.events
    assert event["routeKey"] == "POST /v1/hooks/runpod/{job}/{token}"
    assert event["pathParameters"] == {"job": "job_abc", "token": "tok123"}
    assert json.loads(event["body"]) == {"id": "rp-1"} and event["isBase64Encoded"] is False
    assert "authorizer" not in event["requestContext"]


def test_worker_hook_and_openapi_are_open_but_other_paths_are_not_found(template: dict[str, Any], issuer: LocalIssuer) -> None:
    function = RecordingFunction()
    api = gateway(template, issuer, function)

    # When the worker hook, the OpenAPI document and an unknown path are requested without a token
    worker_status, _, _ = api.handle("POST", "/v1/hooks/worker/job_abc", [], b"{}")
    openapi_status, _, _ = api.handle("GET", "/openapi.json", [], b"")
    unknown_status, _, unknown_body = api.handle("GET", "/nothing-here", [], b"")

    # Then the two open routes reach the function and the unknown path gets API Gateway's 404
    assert [worker_status, openapi_status] == [200, 200]
    assert [e["routeKey"] for e in function.events] == ["POST /v1/hooks/worker/{job}", "ANY /openapi.json"]
    assert unknown_status == 404 and json.loads(unknown_body) == {"message": "Not Found"}


def test_binary_body_is_base64_encoded(template: dict[str, Any], issuer: LocalIssuer) -> None:
    function = RecordingFunction()
    api = gateway(template, issuer, function)
    payload = bytes(range(256))

    api.handle("POST", "/v1/jobs", [("Authorization", f"Bearer {issuer.issue('bob')}"), ("Content-Type", "application/octet-stream")], payload)

    (event,) = function.events
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == payload


def test_function_crash_is_a_gateway_500_without_details(template: dict[str, Any], issuer: LocalIssuer) -> None:
    function = RecordingFunction(error=RuntimeError("secret internals"))

    status, _, body = gateway(template, issuer, function).handle("GET", "/openapi.json", [], b"")

    assert status == 500
    assert json.loads(body) == {"message": "Internal Server Error"}


def test_lambda_result_mapping() -> None:
    # Base64 body, cookies and a plain-JSON result, as API Gateway maps payload v2 responses
    assert http_response({"statusCode": 201, "body": base64.b64encode(b"\x00\x01").decode(), "isBase64Encoded": True})[::2] == (201, b"\x00\x01")
    status, headers, _ = http_response({"statusCode": 200, "cookies": ["a=1"], "headers": {"X-A": "b"}, "body": ""})
    assert ("Set-Cookie", "a=1") in headers and ("X-A", "b") in headers and status == 200
    assert http_response({"items": []}) == (200, [("Content-Type", "application/json")], b'{"items": []}')


PREFLIGHT = [("Origin", "http://localhost:5173"), ("Access-Control-Request-Method", "POST")]


def test_a_preflight_goes_to_the_route_that_takes_options_and_gets_the_cors_headers(template: dict[str, Any], issuer: LocalIssuer) -> None:
    # Given the template's routes (OPTIONS /v1/{proxy+} without an authorizer) and a function answering 204
    function = RecordingFunction(result={"statusCode": 204, "headers": {}, "body": ""})

    # When a browser's token-less preflight arrives
    status, headers, _ = gateway(template, issuer, function).handle("OPTIONS", "/v1/jobs", PREFLIGHT, b"")

    # Then, as in API Gateway, the route that takes OPTIONS gets it (no authorizer) and the CORS headers are added
    assert status == 204 and [e["requestContext"]["http"]["method"] for e in function.events] == ["OPTIONS"]
    assert dict(headers)["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in dict(headers)["Access-Control-Allow-Headers"]


def test_a_preflight_meeting_an_authorized_route_is_401_and_one_no_route_takes_is_the_gateways(
    template: dict[str, Any], issuer: LocalIssuer
) -> None:
    # Given the routes without the unauthenticated OPTIONS route (an ANY route with the JWT authorizer takes OPTIONS)
    function = RecordingFunction()
    routes = [r for r in routes_from_template(template) if r.method != "OPTIONS"]
    local = LocalApiGateway(function, routes, issuer, cors_from_template(template))

    # When preflights arrive for a path the ANY route covers, and for one no route covers
    covered = local.handle("OPTIONS", "/v1/jobs", PREFLIGHT, b"")
    uncovered = local.handle("OPTIONS", "/elsewhere", PREFLIGHT, b"")

    # Then the first meets the authorizer (a browser never sends a token on a preflight), the second is answered by the gateway
    assert covered[0] == 401 and uncovered[0] == 204 and function.events == []
    assert dict(uncovered[1])["Access-Control-Allow-Origin"] == "*"


def test_server_listens_on_loopback_and_bounds_the_body(template: dict[str, Any], issuer: LocalIssuer) -> None:
    # Given the HTTP server in front of the gateway
    function = RecordingFunction()
    server = LocalApiServer(gateway(template, issuer, function)).start()
    try:
        # Then it is bound to 127.0.0.1 only
        assert server.url.startswith("http://127.0.0.1:")
        token = issuer.issue("alice")
        # When a normal request and an oversize one arrive
        ok = httpx.post(f"{server.url}/v1/jobs", json={"preset": "tiny-sd"}, headers={"Authorization": f"Bearer {token}"})
        too_big = httpx.post(f"{server.url}/v1/jobs", content=b"x" * (7 * 1024 * 1024), headers={"Authorization": f"Bearer {token}"})
        # Then the first reaches the function and the second is refused with 413 before it does
        assert ok.status_code == 200
        assert too_big.status_code == 413
        assert len(function.events) == 1 and json.loads(function.events[0]["body"]) == {"preset": "tiny-sd"}
    finally:
        server.stop()
