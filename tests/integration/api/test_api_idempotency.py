"""POST /v1/jobs with Idempotency-Key: one key and one body make one job; one key with another body is a 409."""

from __future__ import annotations

import pytest

from loraforge.models.status import DatasetStatus
from tests.integration.api.conftest import Api, job_body
from tests.support.apigw import OWNER_A, OWNER_B

# Routes that add no metric make powertools warn once per call; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")


def _jobs(api: Api, owner: str = OWNER_A) -> list[dict]:
    return api.call("GET", "/v1/jobs", owner=owner).json["items"]


def test_two_posts_with_one_key_and_body_create_one_job(api: Api) -> None:
    # Given a ready dataset
    dataset = api.dataset()
    body = job_body(dataset.id)
    # When the same request is sent twice with one key (a client retrying after a timeout)
    first = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "retry-me-1"})
    second = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "retry-me-1"})
    # Then both answers carry the same job, and only one exists, with one `created` event
    assert first.status == second.status == 201, (first.json, second.json)
    assert second.json["id"] == first.json["id"]
    assert [j["id"] for j in _jobs(api)] == [first.json["id"]]
    events = api.call("GET", f"/v1/jobs/{first.json['id']}/events").json["items"]
    assert [e["type"] for e in events] == ["created"]


def test_one_key_with_another_body_is_409_and_creates_nothing(api: Api) -> None:
    # Given a job created with a key
    dataset = api.dataset()
    first = api.call("POST", "/v1/jobs", body=job_body(dataset.id), headers={"Idempotency-Key": "k-42"})
    # When the key is reused for a different job
    reused = api.call("POST", "/v1/jobs", body=job_body(dataset.id, hyperparameters={"steps": 900}), headers={"Idempotency-Key": "k-42"})
    # Then it is refused with a code the client can act on, and there is still one job
    assert first.status == 201
    assert reused.status == 409 and reused.error_code == "IDEMPOTENCY_KEY_REUSED"
    assert "different request body" in reused.json["error"]["message"]
    assert len(_jobs(api)) == 1


def test_keys_are_scoped_by_owner(api: Api) -> None:
    # Given two owners that happen to pick the same key
    a = api.call("POST", "/v1/jobs", owner=OWNER_A, body=job_body(api.dataset(OWNER_A).id), headers={"Idempotency-Key": "same"})
    b = api.call("POST", "/v1/jobs", owner=OWNER_B, body=job_body(api.dataset(OWNER_B).id), headers={"Idempotency-Key": "same"})
    # Then each gets their own job
    assert a.status == b.status == 201
    assert a.json["id"] != b.json["id"] and b.json["owner"] == OWNER_B


def test_without_a_key_every_post_is_a_new_job(api: Api) -> None:
    # Given
    dataset = api.dataset()
    # When the same body is posted twice without a key
    ids = {api.call("POST", "/v1/jobs", body=job_body(dataset.id)).json["id"] for _ in range(2)}
    # Then
    assert len(ids) == 2


def test_a_refused_request_does_not_burn_its_key(api: Api) -> None:
    # Given a dataset still being validated
    dataset = api.dataset(status=DatasetStatus.VALIDATING)
    body = job_body(dataset.id)
    refused = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "after-validation"})
    # When validation finishes and the client retries with the same key and body
    api.table.save_dataset(dataset.model_copy(update={"status": DatasetStatus.READY}), expected_version=dataset.version,
                           expected_status=DatasetStatus.VALIDATING)
    accepted = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "after-validation"})
    # Then the first answer was 409 DATASET_NOT_READY and the retry creates the job
    assert refused.status == 409 and refused.error_code == "DATASET_NOT_READY"
    assert accepted.status == 201 and accepted.json["status"] == "queued"
