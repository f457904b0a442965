"""Bad input, each with its status and error code: a clear refusal in the one error shape, and nothing written."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from loraforge.models import new_id
from loraforge.models.dataset import DatasetKind
from loraforge.models.status import DatasetStatus, JobStatus
from loraforge.settings import reset_settings
from tests.integration.api.conftest import Api, job_body
from tests.support.apigw import api_event, invoke

# Routes that add no metric make powertools warn once per call; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

Request = tuple[str, str, dict[str, Any]]


@dataclass
class Case:
    name: str
    status: int
    code: str
    request: Callable[[Api], Request]
    creates_nothing: bool = field(default=True)


def _cursor(plain: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def _post_job(**overrides: Any) -> Callable[[Api], Request]:
    return lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset().id, **overrides)})


def _hp(**values: Any) -> Callable[[Api], Request]:
    return _post_job(hyperparameters=values)


def _webhook(url: str) -> Callable[[Api], Request]:
    return _post_job(notify={"webhook_url": url})


CASES = [
    # the list
    Case("unknown preset", 422, "UNKNOWN_PRESET", _post_job(preset="flux-pro-ultra")),
    Case("hyperparameter outside the preset's bounds", 422, "HYPERPARAMETER_OUT_OF_BOUNDS", _hp(steps=90_000)),
    Case("rank outside the preset's bounds", 422, "HYPERPARAMETER_OUT_OF_BOUNDS", _hp(rank=256)),
    Case("negative steps", 422, "INVALID_INPUT", _hp(steps=-5)),
    Case("zero steps", 422, "INVALID_INPUT", _hp(steps=0)),
    Case("non-string trigger word", 422, "INVALID_INPUT", _post_job(trigger_word=12345)),
    Case("oversize body", 413, "PAYLOAD_TOO_LARGE",
         lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset().id, name="x" * 70_000)})),
    Case("oversize base64 body", 413, "PAYLOAD_TOO_LARGE",
         lambda api: ("POST", "/v1/datasets", {"body": {"name": "x" * 70_000}, "base64_body": True})),
    Case("unknown dataset", 404, "DATASET_NOT_FOUND", lambda api: ("POST", "/v1/jobs", {"body": job_body(new_id("ds"))})),
    Case("dataset awaiting upload", 409, "DATASET_NOT_READY",
         lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset(status=DatasetStatus.AWAITING_UPLOAD).id)})),
    Case("invalid dataset", 409, "DATASET_NOT_READY",
         lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset(status=DatasetStatus.INVALID).id)})),
    Case("bad cursor", 422, "INVALID_CURSOR", lambda api: ("GET", "/v1/jobs", {"query": {"cursor": "bm90LWEtY3Vyc29y"}})),
    Case("cursor with empty key values", 422, "INVALID_CURSOR",
         lambda api: ("GET", "/v1/jobs", {"query": {"cursor": _cursor({"pk": "", "sk": "", "gsi1pk": "OWNER#user-a", "gsi1sk": ""})}})),
    Case("cursor that is not base64", 422, "INVALID_CURSOR", lambda api: ("GET", "/v1/datasets", {"query": {"cursor": "%%%"}})),
    Case("limit 0", 422, "INVALID_LIMIT", lambda api: ("GET", "/v1/jobs", {"query": {"limit": "0"}})),
    Case("limit 101", 422, "INVALID_LIMIT", lambda api: ("GET", "/v1/datasets", {"query": {"limit": "101"}})),
    Case("limit not a number", 422, "INVALID_LIMIT", lambda api: ("GET", "/v1/jobs", {"query": {"limit": "ten"}})),
    Case("cancel of a terminal job", 409, "JOB_ALREADY_FINISHED",
         lambda api: ("POST", f"/v1/jobs/{api.job(status=JobStatus.SUCCEEDED).id}/cancel", {})),
    Case("retry of a running job", 409, "JOB_NOT_RETRYABLE",
         lambda api: ("POST", f"/v1/jobs/{api.job(status=JobStatus.RUNNING).id}/retry", {})),
    Case("webhook over http", 422, "INVALID_WEBHOOK_URL", _webhook("http://93.184.216.34/hook")),
    Case("webhook to a private address", 422, "INVALID_WEBHOOK_URL", _webhook("https://10.1.2.3/hook")),
    Case("webhook to loopback", 422, "INVALID_WEBHOOK_URL", _webhook("https://127.0.0.1:8443/hook")),
    Case("webhook to localhost", 422, "INVALID_WEBHOOK_URL", _webhook("https://localhost/hook")),
    Case("webhook to the metadata service", 422, "INVALID_WEBHOOK_URL", _webhook("https://169.254.169.254/latest/meta-data")),
    Case("webhook with credentials", 422, "INVALID_WEBHOOK_URL", _webhook("https://user:pw@93.184.216.34/hook")),
    Case("webhook host with an empty label", 422, "INVALID_WEBHOOK_URL", _webhook("https://hooks..example.com/hook")),
    Case("webhook host with a label over 63 characters", 422, "INVALID_WEBHOOK_URL", _webhook(f"https://{'a' * 64}.example.com/hook")),
    # and the rest of what a client can get wrong
    Case("body is not JSON", 400, "INVALID_JSON", lambda api: ("POST", "/v1/jobs", {"body": "{'preset': 'sdxl'"})),
    Case("body is a JSON array", 400, "INVALID_JSON", lambda api: ("POST", "/v1/datasets", {"body": "[1, 2]"})),
    Case("body with NaN", 400, "INVALID_JSON", lambda api: ("POST", "/v1/estimates", {"body": '{"preset": "sdxl", "image_count": NaN}'})),
    Case("body with a 5000-digit number", 400, "INVALID_JSON",
         lambda api: ("POST", "/v1/estimates", {"body": '{"preset": "sdxl", "image_count": ' + "9" * 5000 + "}"})),
    Case("body nested too deep", 400, "INVALID_JSON", lambda api: ("POST", "/v1/estimates", {"body": "[" * 10_000 + "]" * 10_000})),
    Case("body marked base64 that is not", 400, "INVALID_JSON",
         lambda api: ("POST", "/v1/datasets", {"raw_base64": "not base64!!"})),
    Case("body that is not UTF-8", 400, "INVALID_JSON", lambda api: ("POST", "/v1/datasets", {"body": b'{"name": "\xff\xfe"}'})),
    Case("missing body", 422, "INVALID_INPUT", lambda api: ("POST", "/v1/jobs", {})),
    Case("unknown field", 422, "INVALID_INPUT", _post_job(gpu="h100")),
    Case("unknown hyperparameter", 422, "INVALID_INPUT", _hp(epochs=10)),
    Case("learning rate as a string", 422, "INVALID_INPUT", _hp(learning_rate="fast")),
    Case("steps as a huge integer", 422, "INVALID_INPUT", _hp(steps=10**30)),
    Case("trigger word with brackets", 422, "INVALID_INPUT", _post_job(trigger_word="[trigger]")),
    Case("dataset id of the wrong shape", 422, "INVALID_INPUT", lambda api: ("POST", "/v1/jobs", {"body": job_body("../../etc")})),
    Case("dataset too small for the preset", 422, "TOO_FEW_IMAGES",
         lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset(images=2).id)})),
    Case("video dataset for an image preset", 422, "DATASET_KIND_MISMATCH",
         lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset(kind=DatasetKind.VIDEO).id)})),
    Case("dataset kind not allowed", 422, "INVALID_INPUT", lambda api: ("POST", "/v1/datasets", {"body": {"name": "a", "kind": "audio"}})),
    Case("dataset name with a slash", 422, "INVALID_INPUT", lambda api: ("POST", "/v1/datasets", {"body": {"name": "a/../b"}})),
    Case("estimate with dataset and image_count", 422, "INVALID_INPUT",
         lambda api: ("POST", "/v1/estimates", {"body": {"preset": "sdxl", "dataset_id": api.dataset().id, "image_count": 3}})),
    Case("status filter that is not a status", 422, "INVALID_STATUS", lambda api: ("GET", "/v1/jobs", {"query": {"status": "done"}})),
    Case("events after a negative seq", 422, "INVALID_AFTER",
         lambda api: ("GET", f"/v1/jobs/{api.job().id}/events", {"query": {"after": "-1"}})),
    Case("artifact kind that does not exist", 422, "INVALID_KIND",
         lambda api: ("GET", f"/v1/jobs/{api.job().id}/artifacts", {"query": {"kind": "weights"}})),
    Case("idempotency key with spaces", 422, "INVALID_IDEMPOTENCY_KEY",
         lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset().id), "headers": {"Idempotency-Key": "two words"}})),
    Case("idempotency key too long", 422, "INVALID_IDEMPOTENCY_KEY",
         lambda api: ("POST", "/v1/jobs", {"body": job_body(api.dataset().id), "headers": {"Idempotency-Key": "k" * 256}})),
    Case("job id of the wrong shape", 404, "JOB_NOT_FOUND", lambda api: ("GET", "/v1/jobs/job_NOT..an-id", {})),
    Case("job id far too long", 404, "JOB_NOT_FOUND", lambda api: ("GET", "/v1/jobs/job_" + "a" * 5000, {})),
    Case("dataset id of the wrong shape", 404, "DATASET_NOT_FOUND", lambda api: ("GET", "/v1/datasets/ds_ÄÖÜ", {})),
    Case("no token", 401, "UNAUTHORIZED", lambda api: ("GET", "/v1/jobs", {"owner": None})),
    Case("token subject unusable as an owner", 401, "UNAUTHORIZED", lambda api: ("GET", "/v1/jobs", {"owner": "../other-user"})),
    Case("unknown route", 404, "ROUTE_NOT_FOUND", lambda api: ("GET", "/v1/trainings", {})),
    Case("wrong method", 405, "METHOD_NOT_ALLOWED", lambda api: ("DELETE", f"/v1/jobs/{api.job().id}", {})),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_with_its_code_and_nothing_is_created(api: Api, case: Case) -> None:
    # Given the request the case describes
    method, path, kwargs = case.request(api)
    raw_base64 = kwargs.pop("raw_base64", None)
    event = api_event(method, path, **kwargs)
    if raw_base64 is not None:
        event |= {"body": raw_base64, "isBase64Encoded": True}
    jobs_before = _job_ids(api)
    # When it is sent
    response = invoke(event, api.context)
    # Then it is refused with the case's status and code, in the one error shape, with a message for a person
    assert (response.status, response.error_code) == (case.status, case.code), json.dumps(response.json)[:500]
    assert set(response.json) == {"error"} and set(response.json["error"]) == {"code", "message", "details"}
    assert len(response.json["error"]["message"]) > 10
    assert "Traceback" not in json.dumps(response.json)
    # and no job appeared
    if case.creates_nothing:
        assert _job_ids(api) == jobs_before


def test_a_preset_whose_gpu_class_has_no_endpoint_is_refused_naming_the_parameter(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a deployment with an endpoint for the cpu class only
    monkeypatch.setenv("RUNPOD_ENDPOINTS", json.dumps({"24gb": "", "cpu": "ep-cpu"}))
    reset_settings()
    dataset = api.dataset()
    # When an sdxl (24gb) job and estimate are asked for
    job = api.call("POST", "/v1/jobs", body=job_body(dataset.id))
    estimate = api.call("POST", "/v1/estimates", body={"preset": "sdxl"})
    # Then both are refused with the class and the template parameter named, and nothing is created
    for response in (job, estimate):
        assert response.status == 422 and response.error_code == "NO_ENDPOINT_FOR_GPU_CLASS"
        assert "24gb" in response.json["error"]["message"] and "RunPodEndpoints" in response.json["error"]["message"]
    assert _job_ids(api) == set()
    # and the preset listing says so
    presets = {p["id"]: p for p in api.call("GET", "/v1/presets").json["items"]}
    assert presets["sdxl"]["endpoint_configured"] is False and presets["tiny-sd"]["endpoint_configured"] is True


def test_validation_details_locate_each_problem(api: Api) -> None:
    # When a body has two problems
    response = api.call("POST", "/v1/jobs", body=job_body(api.dataset().id, hyperparameters={"steps": 0, "rank": "big"}))
    # Then details lists both, with where and what, and no echo of the input
    assert response.status == 422
    locs = {tuple(d["loc"]) for d in response.json["error"]["details"]}
    assert locs == {("body", "hyperparameters", "steps"), ("body", "hyperparameters", "rank")}
    assert all(set(d) == {"loc", "type", "msg"} for d in response.json["error"]["details"])


def _job_ids(api: Api) -> set[str]:
    ids: set[str] = set()
    for owner in ("user-a", "user-b"):
        ids |= {j.id for j in api.table.list_jobs_by_owner(owner, limit=100).items}
    return ids
