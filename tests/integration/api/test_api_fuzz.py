"""Fuzz: 1,000+ generated requests through the real lambda_handler (API Gateway v2 events) against moto, and no 5xx.

Hypothesis draws the method, the path (every route, with real, well-shaped-but-missing and malformed ids, and
paths that match nothing), the query string, headers (Content-Type, Idempotency-Key, anything), the caller (two
owners, no token, unusable subjects) and the body: valid bodies with fields replaced by values of the wrong type,
dropped or added; arbitrary JSON; huge and tiny numbers; unicode; malformed JSON; non-UTF-8 and base64 bodies;
bodies around the 64 KiB bound. Every answer must be below 500, and every 4xx must be the one error shape.
Derandomized, so CI runs the same 1,000 requests every time (change FUZZ_SEED locally to explore further).
"""

from __future__ import annotations

import base64
import copy
import json
import os
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from loraforge.models.status import JobStatus
from tests.integration.api.conftest import PUBLIC_WEBHOOK, Api, job_body
from tests.support.apigw import OWNER_A, OWNER_B, api_event, invoke

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

EXAMPLES = 1000
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20261121"))
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
# (method, path template, the body this route takes: a key of the seeded valid bodies)
ROUTES: list[tuple[str, str, str | None]] = [
    ("GET", "/v1/presets", None),
    ("POST", "/v1/estimates", "estimate"),
    ("POST", "/v1/datasets", "dataset"),
    ("GET", "/v1/datasets", None),
    ("GET", "/v1/datasets/{dataset}", None),
    ("POST", "/v1/jobs", "job"),
    ("POST", "/v1/jobs", "job"),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/{job}", None),
    ("POST", "/v1/jobs/{job}/cancel", "cancel"),
    ("POST", "/v1/jobs/{job}/retry", None),
    ("GET", "/v1/jobs/{job}/events", None),
    ("GET", "/v1/jobs/{job}/metrics", None),
    ("GET", "/v1/jobs/{job}/artifacts", None),
    ("GET", "/v1/webhook-secret", None),
    ("GET", "/openapi.json", None),
]
QUERY_KEYS = ["limit", "cursor", "status", "after", "kind", "preset", "x"]

# Values of every JSON type, including the awkward ones: huge integers, extreme floats, long and non-ASCII strings.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", " ", "0", "-1", "1e309", "null", "ds_", "job_", "../../etc/passwd", "☃" * 30, "\u0000", "sdxl", "https://10.0.0.1/"]),
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=12)
FIELD_PATHS = [
    ("preset",), ("dataset_id",), ("name",), ("trigger_word",), ("image_count",), ("kind",), ("keep_latest",),
    ("hyperparameters",), ("hyperparameters", "steps"), ("hyperparameters", "learning_rate"), ("hyperparameters", "rank"),
    ("hyperparameters", "resolution"), ("hyperparameters", "optimizer"), ("samples",), ("samples", "prompts"), ("samples", "every"),
    ("checkpoints", "every"), ("checkpoints", "keep"), ("notify",), ("notify", "webhook_url"), ("notify", "email"), ("metadata",),
]


def _set(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = document
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


@st.composite
def mutated_bodies(draw: st.DrawFn, bases: list[dict[str, Any]]) -> dict[str, Any]:
    """A valid body with a few fields replaced, dropped or added."""
    body = copy.deepcopy(draw(st.sampled_from(bases)))
    if draw(st.booleans()):  # often one small change: it reaches the deeper checks (preset, bounds, dataset, webhook)
        _set(body, draw(st.sampled_from(FIELD_PATHS)), draw(json_values))
        return body
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        operation = draw(st.sampled_from(["replace", "drop", "add"]))
        if operation == "replace":
            _set(body, draw(st.sampled_from(FIELD_PATHS)), draw(json_values))
        elif operation == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        else:
            body[draw(st.text(min_size=1, max_size=20))] = draw(json_values)
    return body


@st.composite
def bodies(draw: st.DrawFn, bases: list[dict[str, Any]]) -> tuple[Any, bool]:
    """(body as api_event takes it, base64-encode it?); `bases[0]` is the route's own valid body when it has one."""
    kind = draw(st.sampled_from(["none", "valid", "valid", "mutated", "mutated", "mutated", "json", "text", "bytes", "large", "numbers"]))
    as_base64 = draw(st.booleans()) if kind != "none" else False
    if kind == "none":
        return None, False
    if kind == "valid":
        return copy.deepcopy(bases[0] if draw(st.integers(min_value=0, max_value=99)) < 80 else draw(st.sampled_from(bases))), as_base64
    if kind == "mutated":
        return draw(mutated_bodies(bases)), as_base64
    if kind == "json":
        return json.dumps(draw(json_values)), as_base64
    if kind == "text":
        return draw(st.text(max_size=200) | st.sampled_from(['{"a":', "{'a': 1}", "[]", "{}", "NaN", '{"x": Infinity}', "\ufeff{}"])), as_base64
    if kind == "bytes":
        return draw(st.binary(max_size=200)), True
    if kind == "large":
        size = draw(st.sampled_from([64 * 1024 - 40, 64 * 1024, 64 * 1024 + 1, 200_000]))
        return json.dumps({"name": "a" * size}), as_base64
    digits = draw(st.integers(min_value=300, max_value=6000))
    return '{"preset": "sdxl", "image_count": ' + "9" * digits + "}", as_base64


def requests(ids: dict[str, list[str]], bases: dict[str, dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    seeded = list(bases.values())
    job_ids = st.one_of(st.sampled_from(ids["job"]), st.sampled_from(ids["job"]), st.from_regex(r"job_[0-9a-z]{20}", fullmatch=True),
                        st.text(max_size=60))
    dataset_ids = st.one_of(st.sampled_from(ids["dataset"]), st.from_regex(r"ds_[0-9a-z]{20}", fullmatch=True), st.text(max_size=60))
    values = st.text(max_size=30) | st.integers(-(10**30), 10**30).map(str) | st.sampled_from(["1", "5", "100", "queued", "final", ""])
    idempotency_keys = st.text(max_size=300) | st.from_regex(r"[!-~]{1,40}", fullmatch=True)

    @st.composite
    def one(draw: st.DrawFn) -> dict[str, Any]:
        route_method, template, body_kind = draw(st.sampled_from(ROUTES))
        # Mostly the route's own method (hypothesis draws small integers far more often than large ones).
        method = route_method if draw(st.integers(min_value=0, max_value=99)) < 85 else draw(st.sampled_from(METHODS))
        path = template.replace("{job}", draw(job_ids)).replace("{dataset}", draw(dataset_ids))
        if draw(st.integers(min_value=0, max_value=99)) >= 95:
            path = "/" + draw(st.text(max_size=80))
        body, as_base64 = draw(bodies(([bases[body_kind]] if body_kind else []) + seeded))
        query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS) | st.text(min_size=1, max_size=10), values, max_size=3))
        headers = draw(st.fixed_dictionaries({}, optional={"content-type": st.sampled_from(["application/json", "text/plain", ""])
                                                          | st.text(max_size=60),
                                                          "idempotency-key": idempotency_keys, "x-custom": st.text(max_size=300)}))
        owner = draw(st.sampled_from([OWNER_A, OWNER_A, OWNER_A, OWNER_B, None]) | st.text(max_size=140))
        return {"method": method, "path": path, "body": body, "base64_body": as_base64, "query": query, "headers": headers,
                "owner": owner}

    return one()


def _seed(api: Api) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    dataset = api.dataset(OWNER_A)
    jobs = [api.job(OWNER_A, status=s, dataset_id=dataset.id) for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED,
                                                                         JobStatus.SUCCEEDED)]
    jobs.append(api.job(OWNER_B, status=JobStatus.FAILED))
    api.artifacts(jobs[3])
    api.metrics(jobs[1])
    ids = {"job": [j.id for j in jobs], "dataset": [dataset.id, api.dataset(OWNER_B).id]}
    bases = {
        "job": job_body(dataset.id, notify={"webhook_url": PUBLIC_WEBHOOK}, samples={"prompts": ["mychar"], "every": 100},
                        checkpoints={"every": 100, "keep": 2}, metadata={"k": "v"}),
        "estimate": {"preset": "tiny-sd", "image_count": 10, "hyperparameters": {"steps": 20}},
        "dataset": {"name": "fuzz set", "kind": "images"},
        "cancel": {"keep_latest": True},
    }
    return ids, bases


def test_generated_requests_never_get_a_5xx(api: Api) -> None:
    # Given owners with datasets, jobs in several states, artifacts and metrics
    ids, bases = _seed(api)
    statuses: Counter[int] = Counter()
    codes: Counter[str] = Counter()

    # When 1,000 generated requests are sent through the handler
    @seed(FUZZ_SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(request=requests(ids, bases))
    def send(request: dict[str, Any]) -> None:
        body = request.pop("body")
        if isinstance(body, bytes) and not request["base64_body"]:
            body = base64.b64encode(body).decode()
        event = api_event(body=body, **request)
        response = invoke(event, api.context)
        statuses[response.status] += 1
        codes[response.error_code or "-"] += 1
        # Then none is a server error, and every refusal has the one error shape
        assert response.status < 500, f"{event['requestContext']['http']['method']} {event['rawPath']!r}: {response.json}"
        if response.status >= 400:
            assert set(response.json) == {"error"} and {"code", "message", "details"} == set(response.json["error"]), response.json

    send()
    print(f"\nfuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}, codes {dict(codes.most_common())}")
    assert sum(statuses.values()) >= EXAMPLES
    # and the generator reached the routes' success paths too, not only the refusals
    assert statuses[200] > 100 and statuses[201] > 10
