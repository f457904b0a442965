"""Failures through the real lambda_handler that need no AWS: the 500 path and the error shape's JSON safety."""

from __future__ import annotations

import json
import math

import pytest

from loraforge.api.errors import json_safe
from loraforge.api.routers import jobs as jobs_router
from loraforge.api.schemas import JobView
from loraforge.models import Hyperparameters, Job, utcnow
from loraforge.models.status import JobStatus
from tests.support.apigw import api_event, invoke

# Routes that add no metric make powertools warn once per call; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")


def test_an_unexpected_exception_is_a_500_with_the_request_id_and_no_internals(lambda_context, monkeypatch, caplog) -> None:
    # Given a logic function that fails in a way no input explains
    def broken(owner: str, job_id: str) -> Job:
        raise RuntimeError("connection pool exhausted at /opt/python/secret_module.py")

    monkeypatch.setattr(jobs_router, "get_job", broken)
    event = api_event("GET", "/v1/jobs/job_01jd4m7q2x8k3v5n9c6h")
    # When the route is called
    response = invoke(event, lambda_context)
    # Then the client gets a generic 500 it can quote, and nothing of the cause
    assert response.status == 500 and response.error_code == "INTERNAL"
    assert response.json["error"]["details"] == {"request_id": event["requestContext"]["requestId"]}
    assert "secret_module" not in json.dumps(response.json) and "RuntimeError" not in json.dumps(response.json)


def test_json_safe_keeps_json_and_stringifies_the_rest() -> None:
    # Given details as pydantic or our code may produce them
    details = {"ctx": {"error": ValueError("bad")}, "n": math.inf, "ok": [1, "a", None, True], 3: b"raw", "s": {1}}
    # When made JSON-safe
    safe = json_safe(details)
    # Then it serialises strictly
    json.dumps(safe, allow_nan=False)
    assert safe["ok"] == [1, "a", None, True] and safe["n"] == "inf" and safe["3"] == "b'raw'"


def test_the_job_schema_is_exactly_the_public_job() -> None:
    # Given a job with every optional part filled
    now = utcnow()
    job = Job(id="job_01jd4m7q2x8k3v5n9c6h", owner="user-a", status=JobStatus.RUNNING, preset="sdxl", dataset_id="ds_01jd4m5a7b2c9e4f6g8h",
              hyperparameters=Hyperparameters(steps=10, learning_rate=1e-4, rank=4, alpha=4, batch_size=1, resolution=512, optimizer="adamw"),
              created_at=now, updated_at=now, started_at=now, runpod_job_id="rp-1", version=7)
    # When the public form goes through the response model
    shown = JobView.model_validate(job.public()).model_dump(mode="json")
    # Then nothing is added or lost, and control-plane fields are not in the schema
    assert shown == job.public()
    assert "version" not in JobView.model_fields and "worker_seq" not in JobView.model_fields


@pytest.mark.parametrize("depth", [1, 50])
def test_json_safe_bounds_depth(depth: int) -> None:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    json.dumps(json_safe(value))
