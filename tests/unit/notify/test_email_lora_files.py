"""The email's artifact lines name EVERY file of the LoRA (Wan 2.2 14B: one per expert), say so when a resumed attempt's
trainer started over, and stay exactly as they were for a single-file LoRA."""

from __future__ import annotations

from datetime import timedelta

from loraforge.logic.lora_result import lora_result
from loraforge.models import Artifact, ArtifactKind, Hyperparameters, Job, JobStatus, Progress, utcnow
from loraforge.models.job import JobResult, ResumeReport
from loraforge.notifications.email_messages import job_email

HP = Hyperparameters(steps=1000, learning_rate=1e-4, rank=32, alpha=32, batch_size=1, resolution=768, optimizer="adamw8bit")
NOW = utcnow()
JOB_ID = "job_01jd4q2w8e6r4t2y0u8i"
PREFIX = f"jobs/user-b/{JOB_ID}/"


def job(status: JobStatus, result: JobResult, preset: str = "wan22-14b") -> Job:
    return Job(id=JOB_ID, owner="user-b", status=status, preset=preset, dataset_id="ds_01jd4q0a2s4d6f8g0h2j", hyperparameters=HP,
               created_at=NOW - timedelta(hours=2), updated_at=NOW, started_at=NOW - timedelta(hours=1), finished_at=NOW,
               progress=Progress(step=result.steps or 0, total_steps=1000), result=result)


def artifact(kind: ArtifactKind, name: str, step: int, size: int) -> Artifact:
    return Artifact(kind=kind, step=step, key=f"{PREFIX}{kind}/{name}", size=size, sha256="ab" * 32, name=name)


def test_a_split_lora_email_lists_both_expert_files() -> None:
    # Given a succeeded Wan 2.2 14B job whose LoRA is one file per expert
    files = [artifact(ArtifactKind.FINAL, f"{JOB_ID}_{part}.safetensors", 1000, size) for part, size in (("high_noise", 306_000_000),
                                                                                                      ("low_noise", 305_000_000))]
    done = job(JobStatus.SUCCEEDED, lora_result(files, steps=1000, final_loss=0.08))

    # When its email is written
    body = job_email(done, previous_status=JobStatus.RUNNING, bucket="my-bucket").body

    # Then the artifact lines name both files, with their experts and sizes, and say they belong together
    assert "  LoRA        2 files, one per expert; load them together\n" in body
    assert f"              s3://my-bucket/{PREFIX}final/{JOB_ID}_high_noise.safetensors (high_noise, 306,000,000 bytes)\n" in body
    assert f"              s3://my-bucket/{PREFIX}final/{JOB_ID}_low_noise.safetensors (low_noise, 305,000,000 bytes)\n" in body
    assert "Trained" not in body


def test_a_single_file_lora_email_has_the_same_two_lines_as_before() -> None:
    # Given a succeeded SDXL job, its result as the control plane writes it now (with `files`) and as older jobs stored it
    lora = artifact(ArtifactKind.FINAL, "portrait.safetensors", 1000, 171_974_120)
    expected = f"  LoRA        s3://my-bucket/{PREFIX}final/portrait.safetensors\n  Size        171,974,120 bytes\n"

    # When their emails are written
    bodies = [job_email(job(JobStatus.SUCCEEDED, result, "sdxl"), previous_status=JobStatus.RUNNING, bucket="my-bucket").body
              for result in (lora_result([lora], steps=1000), JobResult(lora=lora, steps=1000))]

    # Then both show the LoRA and its size on the two lines they always had
    assert all(expected in body for body in bodies)


def test_the_email_says_when_the_trainer_did_not_resume() -> None:
    # Given a job whose resumed attempt's trainer started from step 0 instead of the step-500 checkpoint
    lora = artifact(ArtifactKind.FINAL, "portrait.safetensors", 1000, 1000)
    report = ResumeReport(requested_step=500, started_step=0, honoured=False)
    done = job(JobStatus.SUCCEEDED, lora_result([lora], steps=1000, resume=report), "sdxl")

    # When its email is written
    body = job_email(done, previous_status=JobStatus.RUNNING, bucket="my-bucket").body

    # Then it says the LoRA was trained from step 0 and why
    assert ("  Trained     from step 0: the trainer did not resume from the step-500 checkpoint, so it trained those steps again\n"
            in body)


def test_a_cancel_that_kept_a_split_checkpoint_lists_both_of_its_files() -> None:
    # Given a Wan 2.2 14B job cancelled with keep_latest: its result is both files of the step-250 checkpoint
    files = [artifact(ArtifactKind.CHECKPOINT, f"{JOB_ID}_000000250_{part}.safetensors", 250, 10) for part in ("low_noise", "high_noise")]
    cancelled = job(JobStatus.CANCELLED, lora_result(files, steps=250))

    # When its email is written
    body = job_email(cancelled, previous_status=JobStatus.CANCELLING, bucket="b").body

    # Then both kept files are listed, high-noise first
    high = body.index(f"{JOB_ID}_000000250_high_noise.safetensors (high_noise, 10 bytes)")
    assert high < body.index(f"{JOB_ID}_000000250_low_noise.safetensors (low_noise, 10 bytes)")
