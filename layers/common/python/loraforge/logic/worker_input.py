"""The RunPod job input of one dispatch (the worker contract, `contract.WorkerInput`) and its RunPod policy.

RunPod echoes `input` in its webhook and shows it in its console: nothing here is a long-lived
secret. URLs are presigned, short-lived and scoped (the output POST can write only this job's
prefix); the callback secret is derived for this one job.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..contract import Callback, CheckpointFile, DatasetSource, OutputTarget, ResumeFrom, WorkerInput
from ..dal import keys
from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..models.errors import InvalidInput
from ..models.job import Estimate, Job
from ..models.status import DatasetStatus
from ..presets import build_training_spec, get_preset
from ..presets.cost_model import estimate as estimate_cost
from ..presets.cost_model import execution_timeout_seconds
from ..public_api import public_api_base_url
from ..secrets_store import signing_key
from ..settings import get_settings
from ..signing import job_secret, runpod_hook_token

RUNPOD_MAX_TTL_SECONDS = 7 * 24 * 3600
MIN_WORKER_TIME_LIMIT_SECONDS = 60
# The worker stops on its own (keeping its last checkpoint) this long before RunPod's executionTimeout kills it.
WORKER_STOP_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class RunPolicy:
    execution_timeout_seconds: int
    ttl_seconds: int
    worker_time_limit_seconds: int


def job_estimate(job: Job) -> Estimate:
    """The estimate stored at creation; recomputed from the preset when a job has none."""
    if job.estimate is not None:
        return job.estimate
    preset = get_preset(job.preset)
    gpu_class = job.gpu_class or preset.gpu_class
    return estimate_cost(preset, job.hyperparameters, image_count=None, min_image_side=None,
                         gpu_price_per_second=get_settings().gpu_prices.get(gpu_class, 0.0), gpu_class=gpu_class)


def run_policy(job: Job) -> RunPolicy:
    """executionTimeout from the estimate with headroom; ttl = that + the time a job may wait in RunPod's queue.

    RunPod's ttl counts from submission and covers queue and run, so once it has passed a submitted
    job can neither be waiting nor running: dispatch relies on that to never start a job twice.
    """
    execution = execution_timeout_seconds(job_estimate(job))
    ttl = min(RUNPOD_MAX_TTL_SECONDS, execution + get_settings().runpod_queue_ttl_seconds)
    margin = min(WORKER_STOP_MARGIN_SECONDS, execution // 10)
    return RunPolicy(execution_timeout_seconds=execution, ttl_seconds=ttl,
                     worker_time_limit_seconds=max(MIN_WORKER_TIME_LIMIT_SECONDS, execution - margin))


def public_url(path: str) -> str:
    base = public_api_base_url()
    if not base:
        raise RuntimeError("PUBLIC_API_URL is not configured: RunPod and the worker cannot call back")
    return base.rstrip("/") + path


def runpod_webhook_url(job_id: str) -> str:
    return public_url(f"/v1/hooks/runpod/{job_id}/{runpod_hook_token(signing_key(), job_id)}")


def worker_callback_url(job_id: str) -> str:
    return public_url(f"/v1/hooks/worker/{job_id}")


def resume_input(job: Job, storage: Storage, ttl: int) -> ResumeFrom:
    """Every file of the checkpoint the job starts from, each presigned (Wan 2.2 14B: both experts), plus its optimizer state."""
    assert job.resume_from is not None
    files = [CheckpointFile(url=storage.presigned_get(a.key, ttl)[0], name=a.key.rsplit("/", 1)[-1], sha256=a.sha256, size=a.size)
             for a in (job.resume_files or [job.resume_from])]  # the stored object's name: the engine's file name
    optimizer_url = storage.presigned_get(job.resume_optimizer.key, ttl)[0] if job.resume_optimizer else None
    return ResumeFrom(step=job.resume_from.step, files=files, optimizer_url=optimizer_url)


def build_worker_input(job: Job, dispatch_token: str, policy: RunPolicy, *, table: JobsTable, storage: Storage) -> WorkerInput:
    """1 DynamoDB read (the dataset); presigning is local. Raises InvalidInput when the job cannot run as asked."""
    settings = get_settings()
    preset = get_preset(job.preset)
    dataset = table.get_dataset(job.dataset_id)
    if dataset is None:
        raise InvalidInput(f"dataset {job.dataset_id} no longer exists", code="DATASET_NOT_FOUND")
    if dataset.status != DatasetStatus.READY:
        raise InvalidInput(f"dataset {job.dataset_id} is {dataset.status}, not ready", code="DATASET_NOT_READY")
    # Presigned URLs must outlive RunPod's queue wait (download at start) and, for uploads, the whole run.
    download_ttl = min(RUNPOD_MAX_TTL_SECONDS, settings.runpod_queue_ttl_seconds + settings.presign_ttl_seconds)
    upload_ttl = min(RUNPOD_MAX_TTL_SECONDS, policy.ttl_seconds + settings.presign_ttl_seconds)
    dataset_url, _ = storage.presigned_get(dataset.archive_key, download_ttl)
    # The manifest is the one list of what ingest accepted (and each item's caption): the worker trains on exactly that.
    manifest_url = storage.presigned_get(dataset.manifest_key, download_ttl)[0] if dataset.manifest_key else None
    post = storage.job_output_post(job.owner, job.id, upload_ttl)
    resume = None
    if job.resume_from is not None and job.resume_from.step >= 1:
        resume = resume_input(job, storage, download_ttl)
    return WorkerInput(
        job_id=job.id,
        attempt=job.attempts,
        dispatch_token=dispatch_token,
        engine=preset.engine,
        spec=build_training_spec(preset, job.hyperparameters, trigger_word=job.trigger_word, samples=job.samples,
                                 checkpoints=job.checkpoints),
        dataset=DatasetSource(url=dataset_url, sha256=dataset.archive_sha256, size=dataset.archive_size,
                              max_bytes=settings.max_dataset_bytes, manifest_url=manifest_url),
        output=OutputTarget(url=post["url"], fields=post["fields"], prefix=keys.job_prefix(job.owner, job.id),
                            max_bytes=settings.max_artifact_bytes),
        callback=Callback(url=worker_callback_url(job.id), secret=job_secret(signing_key(), job.id)),
        resume=resume,
        time_limit_seconds=policy.worker_time_limit_seconds,
    )
