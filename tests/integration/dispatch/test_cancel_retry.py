"""Cancel and retry: the use cases behind POST /v1/jobs/{id}/cancel and /retry, and automatic retries."""

from __future__ import annotations

import threading

import pytest

from loraforge.dal.jobs_table import JobsTable
from loraforge.logic.cancel_job import cancel_job
from loraforge.logic.retry_job import retry_job
from loraforge.models import ArtifactKind, Conflict, EventType, JobStatus, NotFound
from tests.integration.dispatch.helpers import ControlPlane
from tests.support.fake_runpod import Reply


def terminal_events(plane: ControlPlane, job_id: str) -> list[str]:
    ends = {EventType.COMPLETED, EventType.FAILED, EventType.CANCELLED}
    return [str(e.type) for e in plane.table.list_events(job_id) if e.type in ends]


def test_cancel_of_a_queued_job_never_calls_runpod(plane: ControlPlane) -> None:
    # Given a queued job
    job = plane.seed_job()

    # When its owner cancels it, and its stream record is delivered afterwards
    cancelled = cancel_job(job.owner, job.id, keep_latest=False)
    plane.dispatch(job.id)

    # Then it is cancelled at once and RunPod heard nothing
    assert cancelled.status == JobStatus.CANCELLED == plane.job(job.id).status
    assert plane.runpod.calls == []


def test_cancel_of_a_running_job_calls_runpod_cancel_once_and_ends_cancelled(plane: ControlPlane) -> None:
    # Given a running job
    job = plane.running_job()

    # When its owner cancels it (twice: a double click)
    first = cancel_job(job.owner, job.id, keep_latest=False)
    second = cancel_job(job.owner, job.id, keep_latest=False)

    # Then it is cancelling and RunPod got one /cancel
    assert first.status == second.status == JobStatus.CANCELLING
    assert len(plane.runpod.calls_to("cancel")) == 1
    # When RunPod's webhook reports the run CANCELLED
    answer = plane.runpod_webhook(job.id, plane.runpod.webhook_body(job.runpod_job_id or ""))

    # Then the job ends cancelled, its slot free
    assert answer.status == 200
    assert plane.job(job.id).status == JobStatus.CANCELLED
    assert plane.table.capacity_holders() == set()
    assert len(plane.runpod.calls_to("cancel")) == 1


def test_cancel_while_the_run_outcome_is_unknown_ends_at_once_and_a_late_worker_is_stopped(plane: ControlPlane) -> None:
    # Given a job whose /run answer was lost (RunPod did take it)
    job = plane.seed_job()
    plane.runpod.script("run", Reply(accept_then_hang=True))
    plane.dispatch(job.id)
    lost = plane.runpod.only_run_for(job.id)
    token = plane.job(job.id).dispatch_token

    # When its owner cancels it
    cancelled = cancel_job(job.owner, job.id, keep_latest=False)

    # Then it is cancelled at once (there is no known run to stop) and its slot is free
    assert cancelled.status == JobStatus.CANCELLED and plane.table.capacity_holders() == set()
    assert plane.runpod.calls_to("cancel") == []

    # When the lost run starts later, its worker is told to stop and RunPod to cancel it
    late = plane.start_worker(job.id, runpod_job_id=lost.id, token=token)
    assert late.status == 409 and late.body["error"]["code"] == "DUPLICATE_RUN"
    assert plane.runpod.jobs[lost.id].status == "CANCELLED"
    assert plane.job(job.id).status == JobStatus.CANCELLED


def test_cancel_with_keep_latest_makes_the_newest_checkpoint_the_result(plane: ControlPlane) -> None:
    # Given a running job with two stored checkpoints
    job = plane.running_job()
    for seq, step in ((2, 10), (3, 20)):
        plane.worker_event(job.id, "checkpoint", seq, plane.checkpoint(job, step).model_dump(mode="json"))

    # When it is cancelled with keep_latest and the worker confirms
    cancel_job(job.owner, job.id, keep_latest=True)
    plane.worker_event(job.id, "cancelled", 4, plane.result(job, status="cancelled"))

    # Then the newest checkpoint is the result
    stored = plane.job(job.id)
    assert stored.status == JobStatus.CANCELLED
    assert stored.result is not None and stored.result.lora is not None and stored.result.lora.step == 20


def test_cancel_of_a_finished_job_is_409_and_another_owners_job_is_404(plane: ControlPlane) -> None:
    job = plane.running_job()
    plane.runpod_webhook(job.id, plane.finish_on_runpod(job.id))

    with pytest.raises(Conflict) as finished:
        cancel_job(job.owner, job.id, keep_latest=False)
    with pytest.raises(NotFound):
        cancel_job("someone-else", job.id, keep_latest=False)

    assert finished.value.code == "JOB_ALREADY_FINISHED"
    assert plane.job(job.id).status == JobStatus.SUCCEEDED


@pytest.mark.parametrize("order", ["completion_first", "cancel_first", "together"])
def test_cancel_racing_completion_ends_in_exactly_one_terminal_state(plane: ControlPlane, order: str) -> None:
    # Given a running job whose run just completed on RunPod
    job = plane.running_job()
    body = plane.finish_on_runpod(job.id)
    outcomes: list[object] = []

    def cancel() -> None:
        try:
            outcomes.append(cancel_job(job.owner, job.id, keep_latest=False).status)
        except Conflict as exc:
            outcomes.append(exc.code)

    def complete() -> None:
        outcomes.append(plane.runpod_webhook(job.id, body).status)

    # When the cancel and the completion webhook arrive in either order, or at the same time
    if order == "together":
        threads = [threading.Thread(target=cancel), threading.Thread(target=complete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    else:
        for step in ((complete, cancel) if order == "completion_first" else (cancel, complete)):
            step()
    # (a late redelivery of the webhook changes nothing either)
    plane.runpod_webhook(job.id, body)

    # Then the job has exactly one terminal state, recorded once, and no slot held
    final = plane.job(job.id)
    assert final.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED)
    assert len(terminal_events(plane, job.id)) == 1
    assert plane.table.capacity_holders() == set()
    if order == "completion_first":
        assert final.status == JobStatus.SUCCEEDED and "JOB_ALREADY_FINISHED" in outcomes


def test_retry_of_a_failed_job_resumes_from_its_newest_checkpoint(plane: ControlPlane) -> None:
    # Given a job that stored checkpoints (with optimizer state) and then failed with a user error
    job = plane.running_job()
    for seq, step in ((2, 10), (4, 20)):
        plane.worker_event(job.id, "checkpoint", seq, plane.checkpoint(job, step, ArtifactKind.OPTIMIZER).model_dump(mode="json"))
        plane.worker_event(job.id, "checkpoint", seq + 1, plane.checkpoint(job, step).model_dump(mode="json"))
    # (the worker returns `error: "<CODE>: <message>"`; RunPod keeps that string and the rest of the manifest as output)
    plane.runpod.fail(job.runpod_job_id or "", "GPU_OOM: out of memory at batch 4", output=plane.result(job, status="failed"))
    plane.runpod_webhook(job.id, plane.runpod.webhook_body(job.runpod_job_id or ""))
    failed = plane.job(job.id)
    assert failed.status == JobStatus.FAILED and failed.attempts == 1  # user errors are never retried
    assert failed.error is not None and (failed.error.code, failed.error.kind) == ("GPU_OOM", "user")

    # When its owner retries it (twice) and the new job is dispatched
    retried = retry_job(job.owner, job.id)
    again = retry_job(job.owner, job.id)
    plane.dispatch(retried.id)

    # Then one new job exists: attempt 2 of the same work, and its worker input resumes from step 20 with the optimizer
    assert again.id == retried.id != job.id
    assert retried.retry_of == job.id and retried.attempts == 2 and retried.source == "retry"
    assert retried.preset == job.preset and retried.hyperparameters == job.hyperparameters
    assert plane.job(job.id).status == JobStatus.FAILED  # the old job never changes
    worker_input = plane.worker_input(retried.id)
    assert worker_input.attempt == 2
    assert worker_input.resume is not None and worker_input.resume.step == 20
    assert "ohwx_000000020.safetensors" in worker_input.resume.checkpoint_url
    assert worker_input.resume.optimizer_url is not None and "optimizer_000000020.pt" in worker_input.resume.optimizer_url


def test_a_retry_that_died_before_its_created_event_is_completed_by_the_next_call(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a failed job, and a retry call that dies right after writing the new job (before its `created` event)
    job = plane.running_job()
    plane.runpod.fail(job.runpod_job_id or "", "GPU_OOM: out of memory", output=plane.result(job, status="failed"))
    plane.runpod_webhook(job.id, plane.runpod.webhook_body(job.runpod_job_id or ""))
    real_append = JobsTable.append_event

    def dies_on_created(self: JobsTable, job_id: str, type_: EventType, *args, **kwargs):  # type: ignore[no-untyped-def]
        if type_ == EventType.CREATED:
            raise ConnectionError("Lambda timed out")
        return real_append(self, job_id, type_, *args, **kwargs)

    with monkeypatch.context() as crash:
        crash.setattr(JobsTable, "append_event", dies_on_created)
        with pytest.raises(ConnectionError):
            retry_job(job.owner, job.id)

    # When the owner calls retry again, twice
    retried = retry_job(job.owner, job.id)
    again = retry_job(job.owner, job.id)

    # Then both return the job the first call wrote, and it has exactly one `created` event
    assert retried.id == again.id == plane.job(job.id).retried_by
    created = [e for e in plane.table.list_events(retried.id) if e.type == EventType.CREATED]
    assert len(created) == 1 and created[0].data["retry_of"] == job.id and created[0].data["attempt"] == 2


def test_retry_of_a_job_that_is_not_failed_or_cancelled_is_409(plane: ControlPlane) -> None:
    job = plane.seed_job()
    with pytest.raises(Conflict) as refused:
        retry_job(job.owner, job.id)
    assert refused.value.code == "JOB_NOT_RETRYABLE"


def test_system_failure_is_retried_automatically_once_from_the_newest_checkpoint(plane: ControlPlane, configure) -> None:
    # Given one automatic retry allowed, and a running job with a checkpoint at step 10
    configure(MAX_AUTO_RETRIES="1")
    job = plane.running_job()
    plane.worker_event(job.id, "checkpoint", 2, plane.checkpoint(job, 10).model_dump(mode="json"))

    # When the worker crashes
    plane.runpod.fail(job.runpod_job_id or "", '{"error_type": "RuntimeError", "error_message": "CUDA error"}')
    plane.runpod_webhook(job.id, plane.runpod.webhook_body(job.runpod_job_id or ""))

    # Then the same job starts again as attempt 2, resuming from step 10
    retried = plane.job(job.id)
    assert retried.status == JobStatus.STARTING and retried.attempts == 2 and retried.auto_retries == 1
    second = plane.worker_input(job.id)
    assert second.attempt == 2 and second.resume is not None and second.resume.step == 10

    # When attempt 2 crashes too
    plane.start_worker(job.id)
    run = plane.runpod_id(job.id)
    plane.runpod.fail(run, "CUDA error again")
    plane.runpod_webhook(job.id, plane.runpod.webhook_body(run))

    # Then the job failed (system) with the reason, and both runs are billed
    final = plane.job(job.id)
    assert final.status == JobStatus.FAILED and final.error is not None
    assert final.error.code == "WORKER_CRASHED" and final.error.kind == "system" and "CUDA error again" in final.error.message
    assert len(final.billed_runs) == 2 and final.cost.billed_seconds == pytest.approx(2 * 31.5)
