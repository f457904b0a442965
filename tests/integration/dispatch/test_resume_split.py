"""Retrying a Wan 2.2 14B job (one LoRA file per expert at every checkpoint) through the real control plane: the
dispatched worker input resumes from EVERY file of the newest checkpoint, each with a presigned URL serving exactly
the stored bytes. Manual retry (POST /v1/jobs/{id}/retry) and the automatic retry of a system failure."""

from __future__ import annotations

import hashlib

import httpx

from loraforge.contract import WorkerInput
from loraforge.logic.retry_job import retry_job
from loraforge.models import ArtifactKind, Job, JobStatus
from tests.integration.dispatch.helpers import ControlPlane, stored_artifact

PARTS = ("_high_noise", "_low_noise")


def report_split_checkpoint(plane: ControlPlane, job: Job, step: int, seq: int) -> int:
    """The worker's events for one Wan 2.2 save: optimizer state, then the low- and high-noise files. Returns the next seq."""
    run = job.id  # AI-Toolkit's config.name is the job id: file names derive from it
    artifacts = [stored_artifact(job, ArtifactKind.OPTIMIZER, f"optimizer_{step:09d}.pt", step),
                 *(stored_artifact(job, ArtifactKind.CHECKPOINT, f"{run}_{step:09d}{part}.safetensors", step) for part in reversed(PARTS))]
    for artifact in artifacts:
        assert plane.worker_event(job.id, "checkpoint", seq, artifact.model_dump(mode="json")).status == 200
        seq += 1
    return seq


def assert_resumes_both_experts(worker_input: WorkerInput, job: Job, step: int) -> None:
    resume = worker_input.resume
    assert resume is not None and resume.step == step
    assert [f.name for f in resume.files] == [f"{job.id}_{step:09d}{part}.safetensors" for part in PARTS]
    for file in resume.files:
        body = httpx.get(file.url).content  # the presigned GET the worker downloads
        assert hashlib.sha256(body).hexdigest() == file.sha256 and len(body) == file.size and body == f"{file.name}-bytes".encode()
    assert resume.optimizer_url is not None and httpx.get(resume.optimizer_url).content == f"optimizer_{step:09d}.pt-bytes".encode()


def test_a_manual_retry_of_a_wan22_job_resumes_both_experts_of_its_newest_checkpoint(plane: ControlPlane) -> None:
    # Given a running Wan 2.2 job that stored split checkpoints at steps 250 and 500, then ran out of GPU memory
    job = plane.running_job(preset="wan22-14b", steps=1000)
    seq = report_split_checkpoint(plane, job, 250, 2)
    report_split_checkpoint(plane, job, 500, seq)
    plane.runpod.fail(job.runpod_job_id or "", "GPU_OOM: out of memory at batch 4", output=plane.result(job, status="failed"))
    plane.runpod_webhook(job.id, plane.runpod.webhook_body(job.runpod_job_id or ""))
    assert plane.job(job.id).status == JobStatus.FAILED

    # When its owner retries it and the new job is dispatched
    retried = retry_job(job.owner, job.id)
    plane.dispatch(retried.id)

    # Then the new job records both files of step 500, and its worker input resumes both experts from presigned URLs
    stored_retry = plane.job(retried.id)
    assert [a.name for a in stored_retry.resume_files] == [f"{job.id}_000000500{part}.safetensors" for part in PARTS]
    assert stored_retry.resume_from == stored_retry.resume_files[0]
    assert_resumes_both_experts(plane.worker_input(retried.id), job, 500)


def test_the_automatic_retry_of_a_wan22_job_resumes_both_experts(plane: ControlPlane, configure) -> None:
    # Given one automatic retry allowed, and a running Wan 2.2 job with a split checkpoint at step 250
    configure(MAX_AUTO_RETRIES="1")
    job = plane.running_job(preset="wan22-14b", steps=1000)
    report_split_checkpoint(plane, job, 250, 2)

    # When the worker crashes
    plane.runpod.fail(job.runpod_job_id or "", '{"error_type": "RuntimeError", "error_message": "CUDA error"}')
    plane.runpod_webhook(job.id, plane.runpod.webhook_body(job.runpod_job_id or ""))

    # Then attempt 2 of the same job resumes from both files of step 250
    again = plane.job(job.id)
    assert again.status == JobStatus.STARTING and again.attempts == 2
    second = plane.worker_input(job.id)
    assert second.attempt == 2
    assert_resumes_both_experts(second, job, 250)
