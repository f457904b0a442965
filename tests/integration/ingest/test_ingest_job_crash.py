"""Drop-to-train whose Lambda dies inside job creation (after the job write, before anything records it): the
retried event must not start a second job, however many jobs the owner queued in between."""

from __future__ import annotations

import time

import pytest
from aws_lambda_powertools.utilities.idempotency.persistence.dynamodb import DynamoDBPersistenceLayer

from loraforge.dal.clients import client
from loraforge.dal.jobs_table import JobsTable
from loraforge.logic import drop_to_train
from loraforge.logic.create_job import IDEMPOTENCY_PARTITION
from loraforge.models import Hyperparameters, Job, JobStatus, new_id, utcnow
from tests.integration.ingest.conftest import OWNER, IngestRig
from tests.unit.ingest.archive_builders import build_zip, dataset_entries

HP = Hyperparameters(steps=10, learning_rate=1e-2, rank=4, alpha=4, batch_size=1, resolution=64, optimizer="adamw")


def die_before_the_record_completes(monkeypatch: pytest.MonkeyPatch) -> None:
    def timed_out(self: DynamoDBPersistenceLayer, data: object, result: object) -> None:
        raise TimeoutError("Task timed out after 900.00 seconds")

    monkeypatch.setattr(DynamoDBPersistenceLayer, "save_success", timed_out)


def pass_the_dead_invocations_deadline() -> None:
    """The INPROGRESS record of the dead invocation stops blocking once its Lambda deadline has passed."""
    ddb, table = client("dynamodb"), JobsTable().name
    records = ddb.query(TableName=table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": IDEMPOTENCY_PARTITION}})
    assert [r["status"]["S"] for r in records["Items"]] == ["INPROGRESS"]
    for record in records["Items"]:
        ddb.update_item(TableName=table, Key={"pk": record["pk"], "sk": record["sk"]}, UpdateExpression="SET in_progress_expiration = :past",
                        ExpressionAttributeValues={":past": {"N": str(int(time.time() * 1000) - 1000)}})


def queue_other_jobs(count: int) -> None:
    """Jobs the owner queued (through the API or other drops) while the crashed event waited for its retry."""
    for _ in range(count):
        now = utcnow()
        JobsTable().create_job(Job(id=new_id("job"), owner=OWNER, status=JobStatus.QUEUED, preset="tiny-sd", dataset_id=new_id("ds"),
                                   hyperparameters=HP, created_at=now, updated_at=now))


def test_a_drop_retried_after_a_crash_inside_job_creation_starts_one_job(ingest: IngestRig, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a drop whose ingest wrote the job and died before the idempotency record or the dataset said so
    event = ingest.upload(f"incoming/{OWNER}/crash-inside.zip", build_zip(dataset_entries(4)))
    die_before_the_record_completes(monkeypatch)
    with pytest.raises(Exception, match="Task timed out"):
        ingest.handle(event)
    monkeypatch.undo()
    [written] = ingest.jobs()
    # ... and by the time the event is retried (Lambda's async retries, a DLQ redrive) the owner has queued more jobs
    # than the "recent jobs" look-up of drop_to_train covers, and the dead invocation's deadline has passed
    queue_other_jobs(drop_to_train.RECENT_JOBS_SCANNED + 1)
    pass_the_dead_invocations_deadline()
    # When the event is delivered again
    outcome = ingest.handle(event)
    # Then it queues no second job for that dataset: the job written before the crash is the drop's job
    for_this_drop = [j for j in ingest.jobs() if j.dataset_id == written.dataset_id]
    assert [j.id for j in for_this_drop] == [written.id]
    assert outcome["job_id"] == written.id == ingest.dataset(outcome["dataset_id"]).job_id
    # And a further delivery is a duplicate
    assert ingest.handle(event)["action"] == "duplicate"
    assert len([j for j in ingest.jobs() if j.dataset_id == written.dataset_id]) == 1
