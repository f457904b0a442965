"""A method the path does not take: 405 METHOD_NOT_ALLOWED with an `Allow` header, decided from the route table alone.

Through the real lambda_handler (API Gateway v2 events), and through the local API Gateway, which plays template.yaml's
routes, JWT authorizer and CORS: there a request without a token is refused with 401 before any 405, as in AWS.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.api.app import lambda_handler
from loraforge.local.api_server import LocalApiGateway, cors_from_template, routes_from_template
from loraforge.local.auth import LocalIssuer
from loraforge.local.aws_resources import load_template
from loraforge.models import new_id
from tests.integration.api.conftest import Api
from tests.support.apigw import OWNER_A, OWNER_B, ApiResponse, api_event, invoke

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

WELL_SHAPED_IDS = {"{job_id}": "job_" + "0" * 20, "{dataset_id}": "ds_" + "0" * 20}
TRIED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _assert_method_not_allowed(response: ApiResponse, method: str, path_template: str, allowed: list[str]) -> None:
    assert response.status == 405, json.dumps(response.json)[:500]
    assert response.headers["Allow"] == ", ".join(allowed)
    assert response.json == {"error": {
        "code": "METHOD_NOT_ALLOWED",
        "message": f"{path_template} does not take {method}: it accepts {', '.join(allowed)} (the routes are listed in GET /openapi.json)",
        "details": {"method": method, "allowed_methods": allowed},
    }}


@pytest.mark.parametrize(("method", "path", "path_template", "allowed"), [
    ("DELETE", "/v1/jobs/{job}", "/v1/jobs/{job_id}", ["GET"]),
    ("PUT", "/v1/datasets", "/v1/datasets", ["GET", "POST"]),
    ("GET", "/v1/jobs/{job}/cancel", "/v1/jobs/{job_id}/cancel", ["POST"]),
    ("PATCH", "/v1/jobs", "/v1/jobs", ["GET", "POST"]),
    ("DELETE", "/v1/datasets/{dataset}", "/v1/datasets/{dataset_id}", ["GET"]),
    ("POST", "/v1/jobs/{job}/events", "/v1/jobs/{job_id}/events", ["GET"]),
    ("GET", "/v1/estimates", "/v1/estimates", ["POST"]),
    ("GET", "/v1/hooks/runpod/{job}/tok", "/v1/hooks/runpod/{job}/{token}", ["POST"]),
    # HEAD and a plain (non-CORS) OPTIONS are methods like any other: no route takes them.
    ("HEAD", "/v1/presets", "/v1/presets", ["GET"]),
    ("OPTIONS", "/v1/jobs/{job}", "/v1/jobs/{job_id}", ["GET"]),
])
def test_a_wrong_method_on_a_real_path_is_405_with_the_methods_it_accepts(api: Api, method: str, path: str, path_template: str,
                                                                           allowed: list[str]) -> None:
    # Given the caller's own job and dataset
    job, dataset = api.job(), api.dataset()
    # When a method the path does not take is sent to it
    response = api.call(method, path.replace("{job}", job.id).replace("{dataset}", dataset.id))
    # Then it is 405 in the one error shape, naming the path's methods in the body and in Allow
    _assert_method_not_allowed(response, method, path_template, allowed)


def test_every_documented_path_answers_405_for_each_method_it_does_not_document(api: Api) -> None:
    # Given the committed OpenAPI document's paths and their methods (a source independent of the 405 code)
    paths = api.call("GET", "/openapi.json", owner=None).json["paths"]
    assert len(paths) >= 10
    tried = 0
    for path_template, operations in paths.items():
        documented = sorted(m.upper() for m in operations)
        path = path_template
        for placeholder, value in WELL_SHAPED_IDS.items():
            path = path.replace(placeholder, value)
        for method in (m for m in TRIED_METHODS if m not in documented):
            # When that method is sent
            response = api.call(method, path)
            # Then the answer is 405 and Allow lists exactly the documented methods
            _assert_method_not_allowed(response, method, path_template, documented)
            tried += 1
    assert tried >= 30


def test_a_wrong_method_reveals_nothing_about_whose_job_it_is(api: Api, dynamodb_calls: Any) -> None:
    # Given a job of the caller, a job of another owner and an id that names no job
    ids = {"own": api.job(OWNER_A).id, "other owner's": api.job(OWNER_B).id, "missing": new_id("job")}
    dynamodb_calls.clear()
    # When the caller sends DELETE to each
    bodies = {name: api.call("DELETE", f"/v1/jobs/{job_id}", owner=OWNER_A) for name, job_id in ids.items()}
    # Then the three answers are the same 405, decided without reading the table
    assert {name: (r.status, r.headers["Allow"], json.dumps(r.json)) for name, r in bodies.items()} == dict.fromkeys(
        ids, (405, "GET", json.dumps(bodies["missing"].json)))
    assert sum(dynamodb_calls.values()) == 0


def test_a_wrong_method_is_405_without_parsing_the_body_but_the_size_bound_still_comes_first(api: Api) -> None:
    # Given bodies that a route would refuse as INVALID_JSON (not JSON, not an object)
    for body in ("not json", "[1, 2]"):
        # When one is sent with a method the path does not take
        response = invoke(api_event("PUT", "/v1/datasets", body=body), api.context)
        # Then the method is what is refused: the body is never parsed
        _assert_method_not_allowed(response, "PUT", "/v1/datasets", ["GET", "POST"])
    # When the body is over 64 KiB
    oversize = invoke(api_event("PUT", "/v1/datasets", body={"name": "x" * 70_000}), api.context)
    # Then the bound every request body has is checked first, from its length alone (DESIGN §9)
    assert (oversize.status, oversize.error_code) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/trainings"),
    ("DELETE", "/v1/trainings"),
    ("GET", "/v1/jobs/job_00000000000000000000/logs"),
    ("POST", "/v1/jobs/job_00000000000000000000/cancel/now"),
    ("GET", "/v1"),
    ("GET", "/openapi.yaml"),
])
def test_an_unknown_path_stays_404_route_not_found(api: Api, method: str, path: str) -> None:
    # When a path no route has is requested, with any method
    response = api.call(method, path)
    # Then it is 404 ROUTE_NOT_FOUND, without an Allow header
    assert (response.status, response.error_code) == (404, "ROUTE_NOT_FOUND")
    assert response.json["error"]["message"] == f"no route {method} {path}: the routes are listed in GET /openapi.json"
    assert "Allow" not in response.headers


# -- through the local API Gateway (template.yaml's routes, JWT authorizer and CORS) ----------------------------------------
@pytest.fixture
def gateway(api: Api) -> tuple[LocalApiGateway, LocalIssuer, list[dict[str, Any]]]:
    template = load_template()
    issuer = LocalIssuer()
    reached: list[dict[str, Any]] = []

    def function(event: dict[str, Any]) -> Any:
        reached.append(event)
        return lambda_handler(event, api.context)

    return LocalApiGateway(function, routes_from_template(template), issuer, cors_from_template(template)), issuer, reached


def _headers(issuer: LocalIssuer | None, **extra: str) -> list[tuple[str, str]]:
    token = [("Authorization", f"Bearer {issuer.issue(OWNER_A)}")] if issuer else []
    return token + [(name.replace("_", "-"), value) for name, value in extra.items()]


@pytest.mark.parametrize(("path", "allowed"), [("/v1/jobs/{job}", "GET"), ("/v1/hooks/worker/{job}", "POST")])
def test_without_a_token_a_wrong_method_is_401_from_the_gateway_and_with_one_it_is_405(
        api: Api, gateway: tuple[LocalApiGateway, LocalIssuer, list[dict[str, Any]]], path: str, allowed: str) -> None:
    # Given a job, and the gateway that plays template.yaml (ANY /v1/{proxy+} carries the JWT authorizer)
    local, issuer, reached = gateway
    target = path.replace("{job}", api.job().id)
    # When DELETE is sent without a token, then with one
    anonymous = local.handle("DELETE", target, _headers(None), b"")
    signed_in = local.handle("DELETE", target, _headers(issuer), b"")
    # Then the authorizer refuses the first before the function runs (AWS does the same), and the second is the function's 405
    assert (anonymous[0], json.loads(anonymous[2])) == (401, {"message": "Unauthorized"})
    assert len(reached) == 1
    status, headers, body = signed_in
    assert status == 405 and dict(headers)["Allow"] == allowed
    assert json.loads(body)["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_the_openapi_document_answers_405_to_other_methods_without_a_token(
        gateway: tuple[LocalApiGateway, LocalIssuer, list[dict[str, Any]]]) -> None:
    # Given the gateway (ANY /openapi.json has no authorizer)
    local, _, reached = gateway
    # When the document is POSTed to without a token
    status, headers, body = local.handle("POST", "/openapi.json", _headers(None), b"{}")
    # Then the function answers 405 with Allow: GET, not the gateway's 404
    assert (status, dict(headers)["Allow"], json.loads(body)["error"]["code"]) == (405, "GET", "METHOD_NOT_ALLOWED")
    assert [e["routeKey"] for e in reached] == ["ANY /openapi.json"]


def test_cors_preflight_is_answered_through_the_open_options_route_and_a_405_carries_the_cors_origin(
        api: Api, gateway: tuple[LocalApiGateway, LocalIssuer, list[dict[str, Any]]]) -> None:
    # Given a browser on another origin and a job
    local, issuer, reached = gateway
    target = f"/v1/jobs/{api.job().id}"
    # When it sends a preflight (no token: browsers never send one on preflight), then the real cross-origin request
    preflight = local.handle("OPTIONS", target, _headers(None, Origin="https://app.example", Access_Control_Request_Method="GET",
                                                          Access_Control_Request_Headers="authorization"), b"")
    wrong_method = local.handle("PATCH", target, _headers(issuer, Origin="https://app.example"), b"")
    # Then the preflight reaches the function through the unauthenticated OPTIONS route and is a 204 with the template's
    # CORS headers (API Gateway adds them)
    status, headers, _ = preflight
    assert status == 204 and dict(headers)["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in dict(headers)["Access-Control-Allow-Headers"]
    # and the 405 carries the CORS origin, so the page can read the error and its details.allowed_methods
    status, headers, _ = wrong_method
    assert status == 405 and dict(headers)["Allow"] == "GET" and dict(headers)["Access-Control-Allow-Origin"] == "*"
    assert [e["requestContext"]["http"]["method"] for e in reached] == ["OPTIONS", "PATCH"]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/job_" + "0" * 20 + "/cancel", "/v1/datasets", "/v1/no-such-route"])
def test_a_cors_preflight_the_gateway_hands_to_the_function_is_answered_204(api: Api, path: str) -> None:
    # Given API Gateway routes OPTIONS /v1/{proxy+} to the function without the JWT authorizer (template.yaml: an ANY
    # route with an authorizer would refuse a browser's token-less preflight with 401), and adds the CORS headers itself
    # When a browser's preflight (Origin + Access-Control-Request-Method, no token) reaches the function
    response = invoke(api_event("OPTIONS", path, owner=None, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                                                       "Access-Control-Request-Headers": "authorization,content-type"}),
                      api.context)

    # Then it is an empty 204 (a preflight needs a 2xx), decided without reading any owner's data
    assert (response.status, response.raw.get("body") or "") == (204, "")


def test_a_plain_options_request_is_still_a_405(api: Api) -> None:
    # Given an OPTIONS request that is not a preflight (no Access-Control-Request-Method), without a token
    # When it reaches the function through the unauthorized OPTIONS route
    response = api.call("OPTIONS", "/v1/jobs", owner=None)

    # Then it is refused like any method the path does not take
    _assert_method_not_allowed(response, "OPTIONS", "/v1/jobs", ["GET", "POST"])
