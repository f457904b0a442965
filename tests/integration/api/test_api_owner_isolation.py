"""Owner isolation (DESIGN §6): another owner's resource is a 404 with the body of a missing one, and lists never mix owners."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loraforge.models import new_id
from loraforge.models.status import JobStatus
from tests.integration.api.conftest import Api, job_body
from tests.support.apigw import OWNER_A, OWNER_B

# Routes that add no metric make powertools warn once per call; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

# (route, request for a job id or a dataset id): every route that takes an id.
JOB_ROUTES: list[tuple[str, str, Callable[[str], str], dict]] = [
    ("get job", "GET", lambda i: f"/v1/jobs/{i}", {}),
    ("cancel", "POST", lambda i: f"/v1/jobs/{i}/cancel", {"body": {"keep_latest": True}}),
    ("retry", "POST", lambda i: f"/v1/jobs/{i}/retry", {}),
    ("events", "GET", lambda i: f"/v1/jobs/{i}/events", {}),
    ("metrics", "GET", lambda i: f"/v1/jobs/{i}/metrics", {}),
    ("artifacts", "GET", lambda i: f"/v1/jobs/{i}/artifacts", {}),
]


@pytest.mark.parametrize(("name", "method", "path", "kwargs"), JOB_ROUTES, ids=[r[0] for r in JOB_ROUTES])
def test_owner_b_gets_404_for_owner_a_job_like_a_missing_one(api: Api, name: str, method: str, path: Callable[[str], str],
                                                             kwargs: dict) -> None:
    # Given owner A's failed job (retryable, cancellable states differ, but B must never learn which)
    job = api.job(OWNER_A, status=JobStatus.FAILED)
    api.artifacts(job)
    api.metrics(job)
    missing_id = new_id("job")
    # When owner B asks for it, and for a job that does not exist
    other = api.call(method, path(job.id), owner=OWNER_B, **kwargs)
    missing = api.call(method, path(missing_id), owner=OWNER_B, **kwargs)
    # Then both are the same 404, and A's job is untouched
    assert other.status == missing.status == 404
    assert other.json == _with_id(missing.json, missing_id, job.id)
    assert other.error_code == "JOB_NOT_FOUND"
    assert api.table.get_job(job.id).model_dump() == job.model_dump()
    assert api.call("GET", "/v1/jobs", owner=OWNER_B).json["items"] == []


def test_owner_b_gets_404_for_owner_a_dataset_like_a_missing_one(api: Api) -> None:
    # Given owner A's dataset
    dataset = api.dataset(OWNER_A)
    missing_id = new_id("ds")
    # When owner B asks for it
    other = api.call("GET", f"/v1/datasets/{dataset.id}", owner=OWNER_B)
    missing = api.call("GET", f"/v1/datasets/{missing_id}", owner=OWNER_B)
    # Then
    assert other.status == missing.status == 404 and other.error_code == "DATASET_NOT_FOUND"
    assert other.json == _with_id(missing.json, missing_id, dataset.id)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/estimates"])
def test_owner_b_cannot_train_on_or_estimate_with_owner_a_dataset(api: Api, path: str) -> None:
    # Given owner A's ready dataset
    dataset = api.dataset(OWNER_A)
    # When owner B names it in a job or an estimate
    response = api.call("POST", path, owner=OWNER_B, body=job_body(dataset.id))
    # Then it does not exist for B, and no job was created
    assert response.status == 404 and response.error_code == "DATASET_NOT_FOUND"
    assert api.call("GET", "/v1/jobs", owner=OWNER_B).json["items"] == []


def test_lists_never_return_another_owners_items(api: Api) -> None:
    # Given jobs and datasets of two owners
    a_jobs = {api.job(OWNER_A, status=s).id for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED)}
    b_jobs = {api.job(OWNER_B, status=s).id for s in (JobStatus.QUEUED, JobStatus.SUCCEEDED)}
    a_sets, b_sets = {api.dataset(OWNER_A).id}, {api.dataset(OWNER_B).id, api.dataset(OWNER_B).id}
    # When each lists everything, with and without a status filter
    for owner, jobs, sets in ((OWNER_A, a_jobs, a_sets), (OWNER_B, b_jobs, b_sets)):
        listed = {j["id"] for j in api.call("GET", "/v1/jobs", owner=owner, query={"limit": "100"}).json["items"]}
        queued = api.call("GET", "/v1/jobs", owner=owner, query={"status": "queued"}).json["items"]
        datasets = {d["id"] for d in api.call("GET", "/v1/datasets", owner=owner).json["items"]}
        # Then each sees exactly their own
        assert listed == jobs
        assert {j["owner"] for j in queued} == {owner}
        assert datasets == sets


def test_a_cursor_from_another_owners_listing_is_refused(api: Api) -> None:
    # Given owner A has two pages of jobs
    for _ in range(3):
        api.job(OWNER_A)
    cursor = api.call("GET", "/v1/jobs", owner=OWNER_A, query={"limit": "1"}).json["next_cursor"]
    assert cursor
    # When owner B replays A's cursor
    response = api.call("GET", "/v1/jobs", owner=OWNER_B, query={"cursor": cursor})
    # Then it is not a way into A's partition
    assert response.status == 422 and response.error_code == "INVALID_CURSOR"


def _with_id(body: dict, old: str, new: str) -> dict:
    error = dict(body["error"])
    error["message"] = error["message"].replace(old, new)
    return {"error": error}
