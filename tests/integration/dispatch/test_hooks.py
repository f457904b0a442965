"""The RunPod completion webhook and the signed worker events, through the API function."""

from __future__ import annotations

import time

import pytest

from loraforge.dal.storage import Storage
from loraforge.models import ArtifactKind, EventType, JobStatus, Progress
from tests.integration.dispatch.helpers import ControlPlane
from tests.support.events import load_event


def test_completion_webhook_applies_the_result_and_the_actual_cost(plane: ControlPlane) -> None:
    # Given a running job whose RunPod run completed after 60 s of execution and 1.5 s of delay
    job = plane.running_job()
    body = plane.finish_on_runpod(job.id, execution_ms=60_000, delay_ms=1_500)

    # When RunPod's webhook arrives
    answer = plane.runpod_webhook(job.id, body)

    # Then the job succeeded with the final LoRA, its cost is billed seconds × the class price, its slot is free
    assert answer.status == 200 and answer.body["status"] == "applied"
    stored = plane.job(job.id)
    assert stored.status == JobStatus.SUCCEEDED
    assert stored.result is not None and stored.result.lora is not None and stored.result.lora.kind == ArtifactKind.FINAL
    assert stored.cost.billed_seconds == pytest.approx(61.5)
    assert stored.cost.actual_usd == pytest.approx(61.5 * 0.0002)
    assert [a.kind for a in plane.table.list_artifacts(job.id, "final")] == [ArtifactKind.FINAL]
    assert plane.table.capacity_holders() == set()
    assert len(plane.runpod.calls_to("status")) == 1  # the claim was confirmed before it was believed


def test_failed_run_webhook_fails_the_job_with_the_workers_reason_and_cost(plane: ControlPlane) -> None:
    # Given a running job whose run failed on RunPod as in events/runpod_webhook_failed.json (GPU out of memory)
    job = plane.running_job()
    sample = load_event("runpod_webhook_failed")
    run_id = job.runpod_job_id or ""
    plane.runpod.fail(run_id, sample["error"], output={**sample["output"], "job_id": job.id},
                      delay_ms=sample["delayTime"], execution_ms=sample["executionTime"])
    body = {**sample, "id": run_id, "input": plane.runpod.jobs[run_id].input, "output": plane.runpod.jobs[run_id].output}

    # When the webhook arrives
    answer = plane.runpod_webhook(job.id, body)

    # Then the job failed with the worker's code, as a user error (never retried), and the run is billed
    assert answer.status == 200
    stored = plane.job(job.id)
    assert stored.status == JobStatus.FAILED and stored.attempts == 1
    assert stored.error is not None and (stored.error.code, stored.error.kind) == ("GPU_OOM", "user")
    assert "lower batch_size" in stored.error.message
    assert stored.cost.billed_seconds == pytest.approx((sample["delayTime"] + sample["executionTime"]) / 1000)


def test_webhook_delivered_twice_changes_nothing_the_second_time(plane: ControlPlane) -> None:
    # Given a job finished by the webhook
    job = plane.running_job()
    body = plane.finish_on_runpod(job.id)
    plane.runpod_webhook(job.id, body)
    before = plane.job(job.id)
    events_before = plane.table.list_events(job.id)

    # When RunPod delivers it again
    answer = plane.runpod_webhook(job.id, body)

    # Then 200 (so RunPod stops) and nothing changed: not the state, not the cost, not the event log
    assert answer.status == 200 and answer.body["status"] == "ignored"
    after = plane.job(job.id)
    assert after.version == before.version and after.cost == before.cost and after.status == JobStatus.SUCCEEDED
    assert plane.table.list_events(job.id) == events_before


def test_worker_event_after_the_end_changes_nothing(plane: ControlPlane) -> None:
    # Given a finished job
    job = plane.running_job()
    plane.runpod_webhook(job.id, plane.finish_on_runpod(job.id))
    before = plane.job(job.id)

    # When a late progress event and a late failure report arrive
    progress = plane.worker_event(job.id, "progress", 7, {"step": 3, "total_steps": before.progress.total_steps, "loss": 0.5})
    failed = plane.worker_event(job.id, "failed", 8, plane.result(before, status="failed",
                                                                   error={"code": "ENGINE_CRASHED", "message": "x", "kind": "system"}))

    # Then both are acknowledged and ignored
    assert (progress.status, progress.body["status"]) == (200, "ignored")
    assert (failed.status, failed.body["status"]) == (200, "ignored")
    after = plane.job(job.id)
    assert after.status == JobStatus.SUCCEEDED and after.version == before.version and after.progress == before.progress


def test_forged_webhook_token_is_refused_and_nothing_changes(plane: ControlPlane) -> None:
    # Given a running job whose run completed
    job = plane.running_job()
    body = plane.finish_on_runpod(job.id)
    before = plane.job(job.id)

    # When someone posts the completion with a wrong token
    answer = plane.runpod_webhook(job.id, body, token="A" * 43)

    # Then 401 and the body was never applied (RunPod was not even asked)
    assert answer.status == 401 and answer.body["error"]["code"] == "INVALID_HOOK_TOKEN"
    assert plane.job(job.id).version == before.version and plane.job(job.id).status == JobStatus.RUNNING
    assert plane.runpod.calls_to("status") == []


@pytest.mark.parametrize("forgery", ["wrong_secret", "stale_timestamp", "tampered_body"])
def test_badly_signed_worker_event_is_refused_and_nothing_changes(plane: ControlPlane, forgery: str) -> None:
    # Given a running job
    job = plane.running_job()
    before = plane.job(job.id)
    data = {"step": 5, "total_steps": before.progress.total_steps, "loss": 0.3}

    # When a progress event arrives with a bad signature
    if forgery == "wrong_secret":
        answer = plane.worker_event(job.id, "progress", 2, data, secret="whsec_" + "QUJD" * 11)
    elif forgery == "stale_timestamp":
        answer = plane.worker_event(job.id, "progress", 2, data, timestamp=int(time.time()) - 600)
    else:
        answer = plane.worker_event(job.id, "progress", 2, data, tamper=True)

    # Then 401 and no change
    assert answer.status == 401 and answer.body["error"]["code"] == "INVALID_SIGNATURE"
    after = plane.job(job.id)
    assert after.version == before.version and after.progress == before.progress


def test_webhook_claiming_completed_while_runpod_says_in_progress_is_ignored(plane: ControlPlane) -> None:
    # Given a running job whose run is still IN_PROGRESS on RunPod
    job = plane.running_job()
    body = plane.runpod.webhook_body(job.runpod_job_id or "", status="COMPLETED", output=plane.result(job))

    # When a webhook claims it COMPLETED
    answer = plane.runpod_webhook(job.id, body)

    # Then it is acknowledged but not believed
    assert answer.status == 200 and answer.body["status"] == "ignored"
    assert plane.job(job.id).status == JobStatus.RUNNING
    assert plane.job(job.id).result is None


def test_webhook_for_another_run_is_ignored(plane: ControlPlane) -> None:
    # Given a running job
    job = plane.running_job()
    body = plane.finish_on_runpod(job.id)

    # When a webhook names a RunPod job that is not the job's run
    answer = plane.runpod_webhook(job.id, {**body, "id": "someone-elses-run-u1"})

    # Then it changes nothing
    assert answer.status == 200 and answer.body["status"] == "ignored"
    assert plane.job(job.id).status == JobStatus.RUNNING


def test_worker_events_apply_by_sequence_progress_never_goes_back(plane: ControlPlane) -> None:
    # Given a job whose worker has just started
    job = plane.seed_job()
    plane.dispatch(job.id)
    total = job.progress.total_steps

    # When progress events arrive out of order, one of them twice
    first = plane.start_worker(job.id)
    late = plane.worker_event(job.id, "progress", 3, {"step": 30, "total_steps": total, "loss": 0.3,
                                                      "metrics": [{"step": 25, "loss": 0.32}, {"step": 30, "loss": 0.3}]})
    early = plane.worker_event(job.id, "progress", 2, {"step": 20, "total_steps": total, "loss": 0.4})
    again = plane.worker_event(job.id, "progress", 3, {"step": 30, "total_steps": total, "loss": 0.3})

    # Then the job runs, progress stays at the newest step, metrics are stored, the redelivery is recorded once
    assert [a.status for a in (first, late, early, again)] == [200, 200, 200, 200]
    assert again.body["status"] == "ignored"
    stored = plane.job(job.id)
    assert stored.status == JobStatus.RUNNING and stored.started_at is not None
    assert stored.progress.step == 30 and stored.progress.loss == 0.3
    assert {m.step for m in plane.table.list_metrics(job.id)} == {20, 25, 30}
    progress_events = [e for e in plane.table.list_events(job.id) if e.type == EventType.PROGRESS]
    assert sorted(e.data["worker_seq"] for e in progress_events) == [2, 3]


def test_a_resume_the_engine_did_not_honour_takes_progress_back_once(plane: ControlPlane) -> None:
    # Given a retried job that should resume at step 20 of 40, whose worker has started
    job = plane.seed_job(steps=40, progress=Progress(step=20, total_steps=40, percent=50.0))
    plane.dispatch(job.id)
    plane.start_worker(job.id)
    warning = {"lines": ["RESUME_NOT_HONOURED: ..."], "level": "warning", "code": "RESUME_NOT_HONOURED", "expected_step": 20, "actual_step": 0}

    # When the worker says the engine started over at step 0
    said = plane.worker_event(job.id, "log", 2, warning)

    # Then the job's progress is where the engine trains from, not the checkpoint's step
    assert said.status == 200 and plane.job(job.id).progress.step == 0

    # When the engine's progress comes in, and the warning is delivered again
    plane.worker_event(job.id, "progress", 3, {"step": 5, "total_steps": 40, "loss": 0.5})
    again = plane.worker_event(job.id, "log", 2, warning)

    # Then progress moves forward from there and the redelivery does not pull it back
    assert again.body["status"] == "ignored"
    assert plane.job(job.id).progress.step == 5
    logs = [e for e in plane.table.list_events(job.id) if e.type == EventType.LOG and e.data.get("code") == "RESUME_NOT_HONOURED"]
    assert len(logs) == 1 and (logs[0].data["expected_step"], logs[0].data["actual_step"]) == (20, 0)


def test_a_malformed_resume_warning_is_refused_and_changes_nothing(plane: ControlPlane) -> None:
    # Given a running job at step 20
    job = plane.seed_job(steps=40, progress=Progress(step=20, total_steps=40, percent=50.0))
    plane.dispatch(job.id)
    plane.start_worker(job.id)

    # When a RESUME_NOT_HONOURED warning arrives without its steps
    answer = plane.worker_event(job.id, "log", 2, {"code": "RESUME_NOT_HONOURED", "lines": ["?"]})

    # Then it is a 422 naming the problem, and progress is untouched
    assert answer.status == 422 and answer.body["error"]["code"] == "INVALID_WORKER_EVENT"
    assert plane.job(job.id).progress.step == 20


def test_event_of_an_older_attempt_is_ignored(plane: ControlPlane) -> None:
    # Given a running job
    job = plane.running_job()
    before = plane.job(job.id)

    # When an event of attempt 0 arrives
    answer = plane.worker_event(job.id, "progress", 9, {"step": 99, "total_steps": before.progress.total_steps}, attempt=0)

    # Then nothing changes
    assert answer.status == 200 and answer.body["status"] == "ignored"
    assert plane.job(job.id).progress == before.progress


def test_a_second_run_of_the_same_dispatch_is_told_to_stop_and_cancelled(plane: ControlPlane) -> None:
    # Given a job whose run has started
    job = plane.running_job()

    # When another RunPod run of the same dispatch starts (RunPod ran the job twice)
    answer = plane.start_worker(job.id, runpod_job_id="duplicate-run-u1", seq=1)

    # Then it gets 409 DUPLICATE_RUN, RunPod is asked to cancel it, and the job keeps its run
    assert answer.status == 409 and answer.body["error"]["code"] == "DUPLICATE_RUN"
    assert [c.path for c in plane.runpod.calls_to("cancel")] == ["/ep-cpu/cancel/duplicate-run-u1"]
    assert plane.job(job.id).runpod_job_id == job.runpod_job_id and plane.job(job.id).status == JobStatus.RUNNING


def test_the_refused_runs_own_failure_report_does_not_touch_the_job(plane: ControlPlane) -> None:
    # Given a running job, and a duplicate run that was refused with 409
    job = plane.running_job()
    assert plane.start_worker(job.id, runpod_job_id="duplicate-run-u1", seq=1).status == 409

    # When that duplicate reports its own stop (same attempt, signed with the same per-job secret)
    answer = plane.worker_event(job.id, "failed", 2, plane.result(
        job, status="failed", error={"code": "DUPLICATE_RUN", "message": "the API refused this run (409)", "kind": "system"}))

    # Then the job's own run is untouched
    assert answer.status == 200 and answer.body["status"] == "ignored"
    assert plane.job(job.id).status == JobStatus.RUNNING


def test_events_of_a_refused_duplicate_run_are_told_apart_from_the_real_runs(plane: ControlPlane) -> None:
    # Given a running job, and a duplicate run of the same dispatch that was refused with 409
    job = plane.running_job()
    duplicate = "duplicate-run-u1"
    assert plane.start_worker(job.id, runpod_job_id=duplicate, seq=1).status == 409
    stray = plane.checkpoint(job, 40)

    # When the duplicate still reports progress, a checkpoint and a completion (same attempt, same per-job secret)
    answers = [
        plane.worker_event(job.id, "progress", 2, {"step": 40, "total_steps": 100, "loss": 0.3}, runpod_job_id=duplicate),
        plane.worker_event(job.id, "checkpoint", 3, stray.model_dump(mode="json"), runpod_job_id=duplicate),
        plane.worker_event(job.id, "completed", 4, plane.result(job), runpod_job_id=duplicate),
    ]

    # Then each is acknowledged (200, so it stops retrying) and ignored: nothing of the job changed
    assert [(a.status, a.body["status"]) for a in answers] == [(200, "ignored")] * 3
    stored = plane.job(job.id)
    assert stored.status == JobStatus.RUNNING and stored.progress.step == 0 and stored.result is None
    assert plane.table.list_artifacts(job.id) == []

    # And the real run's events, naming the job's recorded run, still apply
    real = plane.worker_event(job.id, "progress", 2, {"step": 5, "total_steps": 100, "loss": 0.5}, runpod_job_id=job.runpod_job_id)
    assert real.status == 200 and real.body["status"] == "applied"
    assert plane.job(job.id).progress.step == 5


def test_checkpoints_beyond_keep_are_deleted_from_s3(plane: ControlPlane) -> None:
    # Given a running job that keeps 2 checkpoints
    job = plane.running_job(keep=2)
    checkpoints = [plane.checkpoint(job, step) for step in (10, 20, 30)]
    optimizers = [plane.checkpoint(job, step, ArtifactKind.OPTIMIZER) for step in (10, 20, 30)]

    # When the worker reports three checkpoints, each with its optimizer state
    for seq, (ckpt, opt) in enumerate(zip(checkpoints, optimizers, strict=True), start=2):
        assert plane.worker_event(job.id, "checkpoint", seq * 2, opt.model_dump(mode="json")).status == 200
        assert plane.worker_event(job.id, "checkpoint", seq * 2 + 1, ckpt.model_dump(mode="json")).status == 200

    # Then the two newest checkpoints and only the newest optimizer state remain, in S3 and in the listing
    assert sorted(a.step for a in plane.table.list_artifacts(job.id, "checkpoint")) == [20, 30]
    assert [a.step for a in plane.table.list_artifacts(job.id, "optimizer")] == [30]
    storage = Storage()
    assert storage.head(checkpoints[0].key) is None and storage.head(optimizers[1].key) is None
    assert storage.head(checkpoints[1].key) is not None and storage.head(checkpoints[2].key) is not None


def test_the_end_of_run_manifest_does_not_bring_back_pruned_checkpoints(plane: ControlPlane) -> None:
    # Given a job that keeps 2 checkpoints, whose worker reported three (the oldest was pruned from S3 and the listing)
    job = plane.running_job(keep=2)
    checkpoints = [plane.checkpoint(job, step) for step in (10, 20, 30)]
    for seq, ckpt in enumerate(checkpoints, start=2):
        assert plane.worker_event(job.id, "checkpoint", seq, ckpt.model_dump(mode="json")).status == 200

    # When the worker's result manifest, which lists every file it uploaded, ends the run
    result = plane.result(job)
    result["artifacts"] = [c.model_dump(mode="json") for c in checkpoints]
    assert plane.worker_event(job.id, "completed", 9, result).status == 200

    # Then the job succeeded and its checkpoint listing still names only stored files: no dead download link
    assert plane.job(job.id).status == JobStatus.SUCCEEDED
    listed = plane.table.list_artifacts(job.id, "checkpoint")
    assert sorted(a.step for a in listed) == [20, 30]
    assert all(Storage().head(a.key) is not None for a in listed)


def test_artifact_outside_the_job_prefix_is_refused(plane: ControlPlane) -> None:
    # Given a running job and another job's checkpoint
    job = plane.running_job()
    other = plane.seed_job()
    foreign = plane.checkpoint(other, 10)

    # When the worker reports it as its own
    answer = plane.worker_event(job.id, "checkpoint", 2, foreign.model_dump(mode="json"))

    # Then it is refused and not recorded
    assert answer.status == 422 and answer.body["error"]["code"] == "INVALID_ARTIFACT"
    assert plane.table.list_artifacts(job.id, "checkpoint") == []


def test_artifact_named_other_than_its_key_is_refused(plane: ControlPlane) -> None:
    # Given a running job and one of its own checkpoints, renamed to climb out of a download folder
    job = plane.running_job()
    renamed = plane.checkpoint(job, 10).model_copy(update={"name": "../../.bashrc"})

    # When the worker reports it
    answer = plane.worker_event(job.id, "checkpoint", 2, renamed.model_dump(mode="json"))

    # Then it is refused and not recorded: a file's name is its key's last segment, which clients save it under
    assert answer.status == 422 and answer.body["error"]["code"] == "INVALID_ARTIFACT"
    assert plane.table.list_artifacts(job.id, "checkpoint") == []


def test_worker_completed_event_ends_the_job_and_the_webhook_adds_the_cost(plane: ControlPlane) -> None:
    # Given a running job whose worker reports completion before RunPod's webhook
    job = plane.running_job()
    result = plane.result(job)
    answer = plane.worker_event(job.id, "completed", 5, result)
    assert answer.status == 200 and plane.job(job.id).status == JobStatus.SUCCEEDED
    assert plane.job(job.id).cost.actual_usd is None

    # When the webhook arrives
    later = plane.runpod_webhook(job.id, plane.finish_on_runpod(job.id, execution_ms=10_000, delay_ms=0))

    # Then the state is unchanged (first end wins) and the cost is recorded
    assert later.status == 200 and later.body["status"] == "ignored"
    stored = plane.job(job.id)
    assert stored.status == JobStatus.SUCCEEDED and stored.cost.billed_seconds == pytest.approx(10.0)
    assert len([e for e in plane.table.list_events(job.id) if e.type == EventType.COMPLETED]) == 1
