"""A RunPod FAILED run keeps only the worker's "<CODE>: <message>" string (its SDK pops `error` from the output):
the outcome still carries the worker's code and the contract's kind for it."""

from __future__ import annotations

from typing import Any

import pytest

from loraforge.contract import WorkerResult
from loraforge.logic.run_outcome import outcome_from_runpod
from loraforge.models import Job, JobStatus, utcnow
from loraforge.models.errors import ErrorKind
from loraforge.presets import get_preset
from loraforge.providers.runpod import RunPodJob


class UntouchedTable:
    """The outcome of a failed run without artifacts needs nothing from DynamoDB."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the table was used ({name})")


def running_job() -> Job:
    preset = get_preset("tiny-sd")
    now = utcnow()
    return Job(id="job_00000000000000000001", owner="u", status=JobStatus.RUNNING, preset=preset.id, dataset_id="ds_x",
               hyperparameters=preset.defaults, created_at=now, updated_at=now, runpod_job_id="rp-1-u1", endpoint_id="ep-cpu")


def failed_output(job: Job) -> dict[str, Any]:
    """What RunPod delivers as `output` of a failed worker run: the result manifest without its `error`."""
    return WorkerResult(job_id=job.id, attempt=1, status="failed", steps=3, total_steps=12).model_dump(mode="json", exclude={"error"})


@pytest.mark.parametrize(("error", "code", "kind"), [
    ("GPU_OOM: CUDA out of memory at step 3: lower batch_size", "GPU_OOM", ErrorKind.USER),
    ("DATASET_DOWNLOAD_FAILED: the dataset could not be downloaded: 403 Forbidden", "DATASET_DOWNLOAD_FAILED", ErrorKind.SYSTEM),
    ("DATASET_UNSAFE: PATH_TRAVERSAL: entry '../x' points outside the archive", "DATASET_UNSAFE", ErrorKind.USER),
    ("DATASET_CHECKSUM_MISMATCH: a.png differs from the validated dataset", "DATASET_CHECKSUM_MISMATCH", ErrorKind.SYSTEM),
])
def test_failed_run_with_the_worker_error_string_keeps_code_and_kind(error: str, code: str, kind: ErrorKind) -> None:
    # Given a RunPod FAILED status with the worker's error string and the manifest (without error) as output
    job = running_job()
    run = RunPodJob(id="rp-1-u1", status="FAILED", output=failed_output(job), error=error, executionTime=1000)

    # When it is turned into an outcome
    outcome = outcome_from_runpod(UntouchedTable(), job, run, source="runpod_webhook")  # type: ignore[arg-type]

    # Then the job fails with the worker's code, message and the contract's kind for that code
    assert outcome.status == "failed" and outcome.error is not None
    assert (outcome.error.code, outcome.error.kind) == (code, kind)
    assert outcome.error.message == error.split(": ", 1)[1]


def test_failed_run_without_output_still_reads_the_worker_error_string() -> None:
    # Given a FAILED status whose output was dropped (RunPod caps payloads)
    run = RunPodJob(id="rp-1-u1", status="FAILED", error="TIMEOUT: the run reached its time limit at step 9 of 12")

    outcome = outcome_from_runpod(UntouchedTable(), running_job(), run, source="reconcile")  # type: ignore[arg-type]

    assert outcome.error is not None and (outcome.error.code, outcome.error.kind) == ("TIMEOUT", ErrorKind.SYSTEM)


def test_a_crash_string_that_is_not_a_worker_error_is_a_system_crash() -> None:
    run = RunPodJob(id="rp-1-u1", status="FAILED", error='{"error_type": "RuntimeError", "error_message": "CUDA error"}')

    outcome = outcome_from_runpod(UntouchedTable(), running_job(), run, source="reconcile")  # type: ignore[arg-type]

    assert outcome.error is not None and outcome.error.code == "WORKER_CRASHED" and outcome.error.kind == ErrorKind.SYSTEM
    assert "RuntimeError: CUDA error" in outcome.error.message
