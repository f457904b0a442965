"""Dispatch through the real stream handler: exactly-once start, RunPod faults, the worker input it sends."""

from __future__ import annotations

import threading
from datetime import timedelta

import httpx
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from functions.dispatch import app as dispatch_app
from loraforge.contract import Engine
from loraforge.dal import keys
from loraforge.models import EventType, JobStatus, utcnow
from loraforge.models.dataset import DatasetManifest
from loraforge.presets.cost_model import execution_timeout_seconds
from loraforge.secrets_store import signing_key
from loraforge.signing import job_secret, runpod_hook_token
from tests.integration.dispatch.helpers import PUBLIC_API_URL, ControlPlane, load_handler_copy
from tests.support.fake_runpod import Reply


def event_types(plane: ControlPlane, job_id: str) -> list[str]:
    return [str(e.type) for e in plane.table.list_events(job_id)]


def test_queued_job_starts_on_runpod_with_the_contract_input(plane: ControlPlane) -> None:
    # Given a queued tiny-sd job
    job = plane.seed_job()

    # When its stream record reaches the dispatch function
    response = plane.dispatch(job.id)

    # Then it is claimed, RunPod got one /run with the worker contract, and the run is recorded
    assert response == {"batchItemFailures": []}
    run = plane.runpod.only_run_for(job.id)
    stored = plane.job(job.id)
    assert stored.status == JobStatus.STARTING
    assert stored.runpod_job_id == run.id and stored.endpoint_id == "ep-cpu"
    assert plane.table.capacity_holders() == {job.id}
    worker_input = plane.worker_input(job.id)
    assert worker_input.job_id == job.id and worker_input.attempt == 1 and worker_input.engine == Engine.DIFFUSERS
    assert worker_input.dispatch_token == stored.dispatch_token
    assert worker_input.spec.hyperparameters == job.hyperparameters
    assert keys.dataset_archive_key(job.owner, job.dataset_id) in worker_input.dataset.url
    # and a working presigned GET of the dataset's manifest (what ingest accepted: the worker trains on exactly that)
    assert worker_input.dataset.manifest_url is not None
    fetched = httpx.get(worker_input.dataset.manifest_url, timeout=10)
    assert fetched.status_code == 200
    manifest = DatasetManifest.model_validate_json(fetched.content)
    assert manifest.dataset_id == job.dataset_id and [item.key for item in manifest.accepted] == ["chars/a.png"]
    assert worker_input.output.prefix == keys.job_prefix(job.owner, job.id)
    assert worker_input.callback is not None
    assert worker_input.callback.url == f"{PUBLIC_API_URL}/v1/hooks/worker/{job.id}"
    assert worker_input.callback.secret == job_secret(signing_key(), job.id)
    assert worker_input.resume is None
    assert run.webhook == f"{PUBLIC_API_URL}/v1/hooks/runpod/{job.id}/{runpod_hook_token(signing_key(), job.id)}"
    assert job.estimate is not None
    timeout_s = execution_timeout_seconds(job.estimate)
    assert run.policy["executionTimeout"] == timeout_s * 1000
    assert run.policy["ttl"] > run.policy["executionTimeout"]
    assert worker_input.time_limit_seconds < timeout_s
    assert EventType.DISPATCHED in event_types(plane, job.id)


def test_the_same_stream_record_twice_starts_one_run(plane: ControlPlane) -> None:
    # Given a queued job whose stream record is delivered twice in one batch, and once more later
    job = plane.seed_job()
    record = plane.stream_record(job.id)

    # When the dispatch function processes them
    plane.dispatch_event(plane.stream_event(record, record))
    plane.dispatch_event(plane.stream_event(record))

    # Then RunPod saw one /run
    assert len(plane.runpod.calls_to("run")) == 1
    assert plane.job(job.id).status == JobStatus.STARTING


def test_two_dispatchers_racing_on_one_job_start_one_run(plane: ControlPlane, monkeypatch) -> None:
    # Given two dispatch containers that both read the job while it is still queued
    job = plane.seed_job()
    containers = [load_handler_copy("a"), load_handler_copy("b")]
    both_read = threading.Barrier(2, timeout=10)
    from loraforge.dal.jobs_table import JobsTable

    real_get_job = JobsTable.get_job

    def get_job_then_wait(self, job_id, consistent=True):
        found = real_get_job(self, job_id, consistent)
        if found is not None and found.status == JobStatus.QUEUED:
            try:
                both_read.wait()
            except threading.BrokenBarrierError:
                pass
        return found

    monkeypatch.setattr(JobsTable, "get_job", get_job_then_wait)
    record = plane.stream_record(job.id)
    answers: list[dict] = []

    # When both handle the same record at the same time
    threads = [threading.Thread(target=lambda c=c: answers.append(plane.dispatch_event(plane.stream_event(record), handler=c)))
               for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    # Then exactly one claim won and RunPod saw one /run
    assert answers == [{"batchItemFailures": []}] * 2
    assert len(plane.runpod.calls_to("run")) == 1
    assert plane.job(job.id).status == JobStatus.STARTING
    assert plane.table.capacity_holders() == {job.id}


def test_run_answering_429_then_500_then_200_is_dispatched(plane: ControlPlane) -> None:
    # Given RunPod refuses twice before accepting
    job = plane.seed_job()
    plane.runpod.script("run", Reply(429, retry_after="0"), Reply(500))

    # When the job is dispatched
    plane.dispatch(job.id)

    # Then it was retried and started once
    assert len(plane.runpod.calls_to("run")) == 3
    plane.runpod.only_run_for(job.id)
    assert plane.job(job.id).status == JobStatus.STARTING
    assert plane.job(job.id).runpod_job_id == plane.runpod.only_run_for(job.id).id


def test_run_timing_out_after_runpod_accepted_it_creates_one_runpod_job(plane: ControlPlane) -> None:
    # Given RunPod accepts the /run but the answer never comes back
    job = plane.seed_job()
    plane.runpod.script("run", Reply(accept_then_hang=True))

    # When the job is dispatched, the stream redelivers the record and reconcile runs
    plane.dispatch(job.id)
    plane.dispatch(job.id)
    plane.reconcile()

    # Then there is exactly one RunPod job for this attempt; the job waits for that run's worker
    lost = plane.runpod.only_run_for(job.id)
    assert len(plane.runpod.calls_to("run")) == 1
    stored = plane.job(job.id)
    assert stored.status == JobStatus.STARTING and stored.runpod_job_id is None
    assert stored.next_attempt_at is not None and stored.next_attempt_at > utcnow() + timedelta(minutes=30)
    failed = [e for e in plane.table.list_events(job.id) if e.type == EventType.DISPATCH_FAILED]
    assert failed and failed[0].data["outcome"] == "unknown"

    # When that run's worker starts, it is accepted and becomes the job's run
    answer = plane.start_worker(job.id, runpod_job_id=lost.id, token=stored.dispatch_token)
    assert answer.status == 200
    assert plane.job(job.id).status == JobStatus.RUNNING and plane.job(job.id).runpod_job_id == lost.id
    assert len(plane.runpod.calls_to("run")) == 1


def test_unknown_run_outcome_is_dispatched_again_only_after_runpod_ttl(plane: ControlPlane) -> None:
    # Given a /run whose outcome is unknown and whose worker never reported
    job = plane.seed_job()
    plane.runpod.script("run", Reply(accept_then_hang=True))
    plane.dispatch(job.id)
    lost = plane.runpod.only_run_for(job.id)
    old_token = plane.job(job.id).dispatch_token

    # When reconcile runs before RunPod's ttl has passed, nothing is started
    plane.reconcile()
    assert len(plane.runpod.calls_to("run")) == 1

    # When the ttl has passed (the lost run can no longer start) and reconcile runs
    plane.runpod.time_out(lost.id)
    plane.set_fields(job.id, dispatched_at=utcnow() - timedelta(days=8))
    plane.reconcile()

    # Then the job is dispatched again with a new token, and a late start of the lost run is refused
    assert len(plane.runpod.calls_to("run")) == 2
    stored = plane.job(job.id)
    assert stored.status == JobStatus.STARTING and stored.runpod_job_id not in (None, lost.id)
    assert stored.dispatch_token != old_token
    late = plane.start_worker(job.id, runpod_job_id=lost.id, token=old_token)
    assert late.status == 409 and late.body["error"]["code"] == "DUPLICATE_RUN"
    assert plane.job(job.id).runpod_job_id == stored.runpod_job_id


def test_webhook_of_a_run_whose_answer_was_lost_settles_the_job(plane: ControlPlane) -> None:
    # Given a /run whose answer was lost, and that run then timed out in RunPod's queue
    job = plane.seed_job()
    plane.runpod.script("run", Reply(accept_then_hang=True))
    plane.dispatch(job.id)
    lost = plane.runpod.only_run_for(job.id)
    plane.runpod.time_out(lost.id)

    # When RunPod's webhook for it arrives (our input echoed, carrying the dispatch token)
    answer = plane.runpod_webhook(job.id, plane.runpod.webhook_body(lost.id))

    # Then the run is recognised as the job's and its end applied: a system failure, so a new attempt started at once
    assert answer.status == 200 and answer.body["status"] == "applied"
    stored = plane.job(job.id)
    assert stored.attempts == 2 and stored.status == JobStatus.STARTING
    assert stored.runpod_job_id not in (None, lost.id)
    retried = [e for e in plane.table.list_events(job.id) if e.type == EventType.RETRY_SCHEDULED]
    assert retried and retried[0].data["error"]["code"] == "RUNPOD_TIMED_OUT"


def test_runpod_down_beyond_the_retry_budget_requeues_then_reconcile_dispatches(plane: ControlPlane) -> None:
    # Given RunPod answers 503 to every /run attempt of one dispatch
    job = plane.seed_job()
    plane.runpod.script("run", *[Reply(503)] * 4)

    # When the job is dispatched
    plane.dispatch(job.id)

    # Then it is back in the queue with a next attempt time and no slot held
    stored = plane.job(job.id)
    assert stored.status == JobStatus.QUEUED and stored.next_attempt_at is not None and stored.next_attempt_at > utcnow()
    assert plane.table.capacity_holders() == set()
    assert plane.runpod.runs_for(job.id) == []
    assert EventType.DISPATCH_FAILED in event_types(plane, job.id)

    # When reconcile runs before the next attempt is due, nothing is sent
    plane.reconcile()
    assert len(plane.runpod.calls_to("run")) == 4

    # When RunPod is back and the attempt is due, reconcile dispatches it
    plane.set_fields(job.id, next_attempt_at=utcnow() - timedelta(seconds=1))
    plane.reconcile()
    assert plane.job(job.id).status == JobStatus.STARTING
    plane.runpod.only_run_for(job.id)


def test_requeue_stream_record_is_dispatched_only_once_its_next_attempt_is_due(plane: ControlPlane) -> None:
    # Given a job RunPod refused, back in the queue with a next attempt time
    job = plane.seed_job()
    plane.runpod.script("run", *[Reply(503)] * 4)
    plane.dispatch(job.id)
    requeued = plane.stream_record(job.id, "dynamodb_stream_job_requeued")
    assert requeued["eventName"] == "MODIFY"

    # When the MODIFY record of the re-queue reaches dispatch before the attempt is due
    assert plane.dispatch_event(plane.stream_event(requeued)) == {"batchItemFailures": []}

    # Then nothing is sent; once due, a record for it starts the job
    assert len(plane.runpod.calls_to("run")) == 4 and plane.job(job.id).status == JobStatus.QUEUED
    plane.set_fields(job.id, next_attempt_at=utcnow() - timedelta(seconds=1))
    plane.dispatch_event(plane.stream_event(plane.stream_record(job.id, "dynamodb_stream_job_requeued")))
    assert plane.job(job.id).status == JobStatus.STARTING
    plane.runpod.only_run_for(job.id)


def test_a_record_reached_too_close_to_the_lambda_timeout_is_left_for_redelivery(plane: ControlPlane) -> None:
    # Given an invocation with only 20 s left (less than one dispatch's worst case)
    job = plane.seed_job()
    record = plane.stream_record(job.id)

    # When the record is handled, the invocation fails (the whole batch: powertools raises) so the stream delivers it again
    with pytest.raises(BatchProcessingError):
        dispatch_app.lambda_handler(plane.stream_event(record), plane.invocation(20_000))

    # Then the job was not claimed and RunPod heard nothing; the redelivery starts it
    assert plane.job(job.id).status == JobStatus.QUEUED and plane.runpod.calls == []
    plane.dispatch(job.id)
    assert plane.job(job.id).status == JobStatus.STARTING


def test_dispatch_gives_up_after_max_dispatch_attempts(plane: ControlPlane, configure) -> None:
    # Given a limit of 2 dispatch attempts and RunPod down
    configure(MAX_DISPATCH_ATTEMPTS="2", RUNPOD_MAX_RETRIES="0")
    job = plane.seed_job()
    plane.runpod.script("run", Reply(503), Reply(503))

    # When both attempts fail
    plane.dispatch(job.id)
    plane.set_fields(job.id, next_attempt_at=utcnow() - timedelta(seconds=1))
    plane.reconcile()

    # Then the job failed with a system error that says why
    stored = plane.job(job.id)
    assert stored.status == JobStatus.FAILED
    assert stored.error is not None and stored.error.code == "RUNPOD_UNAVAILABLE" and stored.error.kind == "system"
    assert plane.table.capacity_holders() == set()


def test_a_job_whose_gpu_class_has_no_endpoint_fails_clearly(plane: ControlPlane, configure) -> None:
    # Given no endpoint configured for the CPU class
    configure(RUNPOD_ENDPOINTS='{"24gb": "ep-24gb"}')
    job = plane.seed_job()

    # When it is dispatched
    plane.dispatch(job.id)

    # Then it fails without calling RunPod
    stored = plane.job(job.id)
    assert stored.status == JobStatus.FAILED and stored.error is not None and stored.error.code == "NO_ENDPOINT_FOR_GPU_CLASS"
    assert plane.runpod.calls == []
