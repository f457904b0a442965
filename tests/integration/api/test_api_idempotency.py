"""POST /v1/jobs with Idempotency-Key: one key and one body make one job; one key with another body is a 409."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from aws_lambda_powertools.utilities.idempotency.persistence.dynamodb import DynamoDBPersistenceLayer
from botocore.exceptions import ClientError

from loraforge.dal.clients import client
from loraforge.dal.jobs_table import JobsTable
from loraforge.logic.create_job import IDEMPOTENCY_PARTITION
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


# -- a Lambda that dies half-way through a create --------------------------------------------------------------------
def die_before_the_record_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job is written, then the invocation dies before powertools marks the idempotency record COMPLETE."""
    def timed_out(self: DynamoDBPersistenceLayer, data: object, result: object) -> None:
        raise TimeoutError("Task timed out after 29.00 seconds")

    monkeypatch.setattr(DynamoDBPersistenceLayer, "save_success", timed_out)


def pass_the_dead_invocations_deadline(api: Api) -> None:
    """What time does to an INPROGRESS record whose Lambda died: its in-progress expiry (the deadline) passes."""
    ddb = client("dynamodb")
    records = ddb.query(TableName=api.table.name, KeyConditionExpression="pk = :pk",
                        ExpressionAttributeValues={":pk": {"S": IDEMPOTENCY_PARTITION}})["Items"]
    assert records and all(r["status"]["S"] == "INPROGRESS" for r in records), records
    for record in records:
        ddb.update_item(TableName=api.table.name, Key={"pk": record["pk"], "sk": record["sk"]},
                        UpdateExpression="SET in_progress_expiration = :past",
                        ExpressionAttributeValues={":past": {"N": str(int(time.time() * 1000) - 1000)}})


def crashed_create(api: Api, monkeypatch: pytest.MonkeyPatch, body: dict, key: str) -> None:
    die_before_the_record_completes(monkeypatch)
    crashed = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": key})
    monkeypatch.undo()
    assert crashed.status >= 500, crashed.json  # the client saw no answer it can use, so it retries
    assert len(_jobs(api)) == 1  # ... but the job had been written
    pass_the_dead_invocations_deadline(api)


def test_a_retry_after_a_crash_past_the_job_write_returns_that_job(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a create whose Lambda died after writing the job, and whose deadline has passed
    dataset = api.dataset()
    body = job_body(dataset.id)
    crashed_create(api, monkeypatch, body, "crash-then-retry")
    written = _jobs(api)[0]
    # When the client retries with the same key and body
    retried = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "crash-then-retry"})
    again = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "crash-then-retry"})
    # Then it gets the job that was written, and the owner has exactly one job (one GPU run), with one `created` event
    assert retried.status == 201, retried.json
    assert retried.json["id"] == again.json["id"] == written["id"]
    assert [j["id"] for j in _jobs(api)] == [written["id"]]
    events = api.call("GET", f"/v1/jobs/{written['id']}/events").json["items"]
    assert [e["type"] for e in events] == ["created"]


def test_another_body_with_the_key_of_a_crashed_create_is_409(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a create whose Lambda died after writing the job
    dataset = api.dataset()
    crashed_create(api, monkeypatch, job_body(dataset.id), "crash-then-reuse")
    # When the key is reused for a different job
    reused = api.call("POST", "/v1/jobs", body=job_body(dataset.id, hyperparameters={"steps": 900}),
                      headers={"Idempotency-Key": "crash-then-reuse"})
    # Then it is refused as today's reuse is, and still one job exists
    assert reused.status == 409 and reused.error_code == "IDEMPOTENCY_KEY_REUSED", reused.json
    assert len(_jobs(api)) == 1


def test_a_retry_after_a_failure_between_the_job_and_its_event_returns_that_job(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a create that wrote the job and then failed to append its `created` event (DynamoDB throttled it)
    dataset = api.dataset()
    body = job_body(dataset.id)
    throttled = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}}, "UpdateItem")
    monkeypatch.setattr(JobsTable, "append_event", lambda *args, **kwargs: (_ for _ in ()).throw(throttled))
    failed = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "half-written"})
    monkeypatch.undo()
    assert failed.status >= 500 and len(_jobs(api)) == 1
    # When the client retries with the same key and body
    retried = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "half-written"})
    # Then it gets that job, which now has its `created` event, and no second job exists
    assert retried.status == 201 and [j["id"] for j in _jobs(api)] == [retried.json["id"]]
    events = api.call("GET", f"/v1/jobs/{retried.json['id']}/events").json["items"]
    assert [e["type"] for e in events] == ["created"]


def test_a_key_stays_bound_to_its_job_after_the_idempotency_record_expires(api: Api) -> None:
    # Given a job created with a key, whose 24-hour idempotency record has since been removed by the table's TTL
    dataset = api.dataset()
    first = api.call("POST", "/v1/jobs", body=job_body(dataset.id), headers={"Idempotency-Key": "long-lived"})
    ddb = client("dynamodb")
    for record in ddb.query(TableName=api.table.name, KeyConditionExpression="pk = :pk",
                            ExpressionAttributeValues={":pk": {"S": IDEMPOTENCY_PARTITION}})["Items"]:
        ddb.delete_item(TableName=api.table.name, Key={"pk": record["pk"], "sk": record["sk"]})
    # When the key is sent again, with the same body and with another
    same = api.call("POST", "/v1/jobs", body=job_body(dataset.id), headers={"Idempotency-Key": "long-lived"})
    other = api.call("POST", "/v1/jobs", body=job_body(dataset.id, name="v2"), headers={"Idempotency-Key": "long-lived"})
    # Then the same body still gets the first job, another body is refused, and one job exists
    assert first.status == same.status == 201 and same.json["id"] == first.json["id"]
    assert other.status == 409 and other.error_code == "IDEMPOTENCY_KEY_REUSED"
    assert [j["id"] for j in _jobs(api)] == [first.json["id"]]


def test_a_keyed_create_costs_the_dynamodb_calls_of_the_readme(api: Api, dynamodb_calls: Counter[str]) -> None:
    # Given a ready dataset
    body = job_body(api.dataset().id)
    # When a job is created with a key, then the same request is replayed
    dynamodb_calls.clear()
    first = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "counted"})
    created = dict(dynamodb_calls)
    dynamodb_calls.clear()
    replay = api.call("POST", "/v1/jobs", body=body, headers={"Idempotency-Key": "counted"})
    # Then the create is: idempotency record (put, then update to COMPLETE), dataset read, job put, `created` event
    # (sequence update + put); the replay is answered by the failed record put alone (it returns the stored record)
    assert first.status == replay.status == 201
    assert created == {"PutItem": 3, "GetItem": 1, "UpdateItem": 2}
    assert dict(dynamodb_calls) == {"PutItem": 1}
