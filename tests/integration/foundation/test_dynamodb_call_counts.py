"""The DynamoDB calls per operation documented in the README's access-pattern table (issue 2)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from loraforge.dal.jobs_table import JobsTable
from loraforge.models import Artifact, EventType, Hyperparameters, Job, JobStatus, MetricPoint, new_id, utcnow

HP = Hyperparameters(steps=10, learning_rate=1e-2, rank=4, alpha=4, batch_size=1, resolution=64, optimizer="adamw")


def make_job(i: int = 0) -> Job:
    now = utcnow() + timedelta(milliseconds=i)
    return Job(id=new_id("job"), owner="alice", status=JobStatus.QUEUED, preset="tiny-sd", dataset_id="ds_" + "0" * 20,
               hyperparameters=HP, created_at=now, updated_at=now)


@pytest.fixture
def table(aws_stack) -> JobsTable:
    return JobsTable()


def calls_of(counter, action) -> dict[str, int]:
    counter.clear()
    action()
    return dict(counter)


def test_calls_per_operation(table, dynamodb_calls):
    # Given a job in the table
    job = make_job()
    # When each operation runs / Then it costs exactly the documented calls
    assert calls_of(dynamodb_calls, lambda: table.create_job(job)) == {"PutItem": 1}
    assert calls_of(dynamodb_calls, lambda: table.get_job(job.id)) == {"GetItem": 1}
    assert calls_of(dynamodb_calls, lambda: table.list_jobs_by_owner("alice", limit=20)) == {"Query": 1}
    assert calls_of(dynamodb_calls, lambda: table.list_jobs_by_status(JobStatus.QUEUED)) == {"Query": 1}
    starting = {}
    assert calls_of(dynamodb_calls, lambda: starting.setdefault("j", table.transition(job, JobStatus.STARTING))) == {"TransactWriteItems": 1}
    running = {}
    assert calls_of(dynamodb_calls, lambda: running.setdefault("j", table.transition(starting["j"], JobStatus.RUNNING))) == {"UpdateItem": 1}
    assert calls_of(dynamodb_calls, lambda: table.update_job(job.id, set_fields={"progress": {"step": 1}})) == {"UpdateItem": 1}
    assert calls_of(dynamodb_calls, lambda: table.append_event(job.id, EventType.PROGRESS)) == {"UpdateItem": 1, "PutItem": 1}
    assert calls_of(dynamodb_calls, lambda: table.append_event(job.id, EventType.PROGRESS, dedupe_key="w1-1")) == {
        "UpdateItem": 1, "TransactWriteItems": 1}
    assert calls_of(dynamodb_calls, lambda: table.list_events(job.id)) == {"Query": 1}
    points = [MetricPoint(step=s, loss=1.0) for s in range(30)]
    assert calls_of(dynamodb_calls, lambda: table.put_metrics(job.id, points)) == {"BatchWriteItem": 2}
    art = Artifact(kind="checkpoint", step=1, key=f"jobs/alice/{job.id}/checkpoints/a", size=1, sha256="a" * 64)
    assert calls_of(dynamodb_calls, lambda: table.put_artifact(job.id, art)) == {"PutItem": 1}
    assert calls_of(dynamodb_calls, lambda: table.list_artifacts(job.id)) == {"Query": 1}
    assert calls_of(dynamodb_calls, lambda: table.transition(running["j"], JobStatus.SUCCEEDED)) == {"TransactWriteItems": 1}
    queued = table.create_job(make_job(1))
    assert calls_of(dynamodb_calls, lambda: table.transition(queued, JobStatus.CANCELLED)) == {"UpdateItem": 1}
    # a run whose cost is still due: one marker per run, listed from the sparse status index, deleted once settled
    assert calls_of(dynamodb_calls, lambda: table.put_pending_cost(job.id, "rp-1", "ep-cpu")) == {"PutItem": 1}
    assert calls_of(dynamodb_calls, lambda: table.put_pending_cost(job.id, "rp-1", "ep-cpu")) == {"PutItem": 1}  # kept, not duplicated
    assert calls_of(dynamodb_calls, lambda: table.list_pending_costs()) == {"Query": 1}
    assert [(p.job_id, p.runpod_job_id, p.endpoint_id) for p in table.list_pending_costs().items] == [(job.id, "rp-1", "ep-cpu")]
    assert calls_of(dynamodb_calls, lambda: table.delete_pending_cost(job.id, "rp-1")) == {"DeleteItem": 1}
    assert table.list_pending_costs().items == []
