"""The email a person reads: subject rules SNS enforces, what a success and a failure say, and what to do next."""

from __future__ import annotations

from datetime import timedelta

import pytest

from loraforge.models import (
    Artifact,
    ArtifactKind,
    Cost,
    Dataset,
    DatasetError,
    DatasetStats,
    DatasetStatus,
    ErrorKind,
    Hyperparameters,
    Job,
    JobError,
    JobResult,
    JobStatus,
    Progress,
    RejectedItem,
    utcnow,
)
from loraforge.notifications.email_messages import SUBJECT_MAX, dataset_email, job_email, next_step

HP = Hyperparameters(steps=2000, learning_rate=1e-4, rank=16, alpha=16, batch_size=4, resolution=1024, optimizer="adamw8bit")
NOW = utcnow()


def job(status: JobStatus = JobStatus.SUCCEEDED, **changes) -> Job:
    base = Job(id="job_01jd4q2w8e6r4t2y0u8i", owner="user-b", status=status, name="portrait set", preset="sdxl",
               dataset_id="ds_01jd4q0a2s4d6f8g0h2j", hyperparameters=HP, created_at=NOW - timedelta(hours=1),
               updated_at=NOW, started_at=NOW - timedelta(minutes=57, seconds=30), finished_at=NOW, run_seconds=3450.0)
    return base.model_copy(update=changes)


def test_a_success_email_has_the_numbers_and_where_the_lora_is():
    # Given a finished job with a result, a loss and a cost
    lora = Artifact(kind=ArtifactKind.FINAL, step=2000, key="jobs/user-b/job_01jd4q2w8e6r4t2y0u8i/final/portrait.safetensors",
                    size=171_974_120, sha256="ab" * 32)
    done = job(result=JobResult(lora=lora, steps=2000, final_loss=0.0912), progress=Progress(step=2000, total_steps=2000),
               cost=Cost(estimated_usd=0.65, actual_usd=0.66, billed_seconds=3472.0))
    # When its email is written
    email = job_email(done, previous_status=JobStatus.RUNNING, bucket="my-bucket")
    # Then subject and body carry name, id, preset, status, duration, steps, loss, cost and the artifact locations
    assert email.subject == "[loraforge] \"portrait set\" succeeded (sdxl, 2000 of 2000 steps)"
    for text in ("job_01jd4q2w8e6r4t2y0u8i", "portrait set", "sdxl", "succeeded (was running)", "57m 30s", "2000 of 2000",
                 "0.0912", "$0.66", "Estimate made before launch, for the full run: $0.65",
                 "s3://my-bucket/jobs/user-b/job_01jd4q2w8e6r4t2y0u8i/final/portrait.safetensors",
                 "s3://my-bucket/jobs/user-b/job_01jd4q2w8e6r4t2y0u8i/", "loraforge jobs download job_01jd4q2w8e6r4t2y0u8i"):
        assert text in email.body, text
    assert email.attributes == {"owner": "user-b", "event": "job.succeeded", "job_id": "job_01jd4q2w8e6r4t2y0u8i", "preset": "sdxl"}


@pytest.mark.parametrize(("code", "kind", "expected"), [
    ("GPU_OOM", ErrorKind.USER, ["resolution", "batch_size", "GPU class"]),
    ("DATASET_INVALID", ErrorKind.USER, ["GET /v1/datasets/ds_01jd4q0a2s4d6f8g0h2j", "rejected"]),
    ("WORKER_SILENT", ErrorKind.SYSTEM, ["loraforge jobs retry job_01jd4q2w8e6r4t2y0u8i"]),
    ("SOMETHING_NEW", ErrorKind.USER, ["Fix the input"]),
])
def test_a_failure_email_names_the_code_the_message_and_the_next_step(code, kind, expected):
    # Given a failed job
    failed = job(JobStatus.FAILED, error=JobError(code=code, message="what exactly happened", kind=kind))
    # When its email is written
    email = job_email(failed, previous_status=JobStatus.RUNNING, bucket="b")
    # Then it names the code (subject too), the message and the next step for that error
    assert code in email.subject and code in email.body and "what exactly happened" in email.body
    assert next_step(failed) in email.body
    for text in expected:
        assert text in email.body, text


def test_a_user_error_is_not_answered_with_a_plain_retry():
    failed = job(JobStatus.FAILED, error=JobError(code="GPU_OOM", message="oom", kind=ErrorKind.USER))
    assert "jobs retry" not in next_step(failed)


def test_subjects_are_short_single_line_ascii_as_sns_requires():
    # Given a job whose name is long, multi-line and not ASCII
    odd = job(JobStatus.FAILED, name="Ünïcødé ✨ " * 20 + "\nsecond line", error=JobError(code="TIMEOUT", message="m"))
    # When its email is written
    subject = job_email(odd, previous_status=JobStatus.RUNNING, bucket="b").subject
    # Then SNS accepts the subject: ASCII, one line, fewer than 100 characters
    assert len(subject) <= SUBJECT_MAX < 100
    assert subject.isascii() and "\n" not in subject and subject.endswith("...")


def test_an_invalid_dataset_email_lists_the_reasons_and_rejected_files():
    ds = Dataset(id="ds_01jd4r5t7y9u1i3o5p7a", owner="user-b", name="portrait set", status=DatasetStatus.INVALID,
                 created_at=NOW, updated_at=NOW, archive_key="datasets/user-b/ds_01jd4r5t7y9u1i3o5p7a/dataset.zip",
                 stats=DatasetStats(images=3, rejected=12), errors=[DatasetError(code="TOO_FEW_IMAGES", message="3 usable images")],
                 rejected_sample=[RejectedItem(key="a.heic", reason="NOT_AN_IMAGE", message="HEIC is not supported")])
    email = dataset_email(ds, bucket="b")
    assert "TOO_FEW_IMAGES" in email.subject
    assert "3 usable images" in email.body and "a.heic: NOT_AN_IMAGE" in email.body and "11 more" in email.body
    assert email.attributes == {"owner": "user-b", "event": "dataset.invalid", "dataset_id": "ds_01jd4r5t7y9u1i3o5p7a"}
