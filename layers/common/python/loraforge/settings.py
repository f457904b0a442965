"""Configuration of every function, read from the environment once (DESIGN §9: no secrets here).

Secret *values* never live in the environment: only Secrets Manager ARNs, read at runtime by
`loraforge.secrets_store`.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Settings(BaseModel):
    model_config = ConfigDict(defer_build=True)

    table_name: str = Field(default="loraforge-jobs")
    bucket_name: str = Field(default="loraforge-data")
    topic_arn: str | None = None
    webhook_queue_url: str | None = None
    webhook_dlq_url: str | None = Field(default=None, description="Where a webhook goes after its last failed delivery attempt")
    event_bus_name: str = "default"
    public_api_url: str | None = Field(default=None, description="Base URL of the HTTP API, for callbacks")
    runpod_base_url: str = "https://api.runpod.ai/v2"
    runpod_api_key_secret_arn: str | None = None
    signing_secret_arn: str | None = None
    runpod_endpoints: dict[str, str] = Field(default_factory=dict, description="GPU class -> RunPod endpoint id")
    gpu_prices: dict[str, float] = Field(default_factory=dict, description="GPU class -> USD per second")
    # Operational limits. Each is a template parameter of the same bounds and default (tests/template/test_parameters.py
    # keeps them equal); CloudFormation refuses an out-of-range value at deploy time, before a function could fail to start.
    global_concurrency: int = Field(default=4, ge=1, description="Most jobs holding a GPU run at once, all owners together")
    owner_concurrency: int = Field(default=2, ge=1, description="Most jobs holding a GPU run at once for one owner")
    max_dispatch_attempts: int = Field(default=5, ge=1, le=20, description="/run attempts of one job before RUNPOD_UNAVAILABLE")
    max_auto_retries: int = Field(default=1, ge=0, le=5, description="Automatic retries (from the last checkpoint) of a system failure")
    worker_silence_seconds: int = Field(default=900, ge=30, le=24 * 3600, description="A running worker silent this long is stopped (WORKER_SILENT)")
    runpod_max_retries: int = Field(default=4, ge=0, le=10, description="Retries of one RunPod call on 429/5xx/transport errors")
    runpod_backoff_seconds: float = Field(default=0.5, ge=0.0, le=10.0, description="Base of the exponential backoff (full jitter)")
    runpod_timeout_seconds: float = Field(default=10.0, ge=0.5, le=60, description="Read/write timeout of one RunPod call (connect: 3 s)")
    runpod_queue_ttl_seconds: int = Field(
        default=3600, ge=60, le=6 * 24 * 3600,
        description="How long a job may wait in RunPod's queue: policy.ttl = executionTimeout + this",
    )
    dispatch_retry_seconds: int = Field(default=30, ge=1, le=3600, description="Base delay before re-dispatching after RunPod refused /run")
    presign_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600, description="Lifetime of download links and the worker's URLs")
    upload_ttl_seconds: int = Field(default=900, ge=60, le=3600, description="Lifetime of a dataset upload form (presigned POST)")
    # Ingest streams the archive to its 4 GiB /tmp and may spill one inflated entry (up to 1 GiB) beside it: 2.5 GiB leaves room.
    max_dataset_bytes: int = Field(default=2 * 1024**3, ge=1_000_000, le=5 * 1024**3 // 2, description="Largest dataset archive (ARCHIVE_TOO_LARGE)")
    # One presigned POST per file: S3 takes at most 5 GiB in one POST, so a larger limit could never be used.
    max_artifact_bytes: int = Field(default=5 * 1024**3, ge=1024**2, le=5 * 1024**3, description="Largest single file a worker may upload")
    # Local stack only: lets webhook receivers on loopback through. No API call can set it.
    allow_loopback_webhooks: bool = False
    local_signing_key: str | None = Field(default=None, description="Local stack only: signing key without Secrets Manager")
    local_runpod_api_key: str | None = None

    @field_validator("runpod_endpoints", "gpu_prices", mode="before")
    @classmethod
    def _json_map(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value


_ENV = {
    "table_name": "TABLE_NAME",
    "bucket_name": "BUCKET_NAME",
    "topic_arn": "TOPIC_ARN",
    "webhook_queue_url": "WEBHOOK_QUEUE_URL",
    "webhook_dlq_url": "WEBHOOK_DLQ_URL",
    "event_bus_name": "EVENT_BUS_NAME",
    "public_api_url": "PUBLIC_API_URL",
    "runpod_base_url": "RUNPOD_BASE_URL",
    "runpod_api_key_secret_arn": "RUNPOD_API_KEY_SECRET_ARN",
    "signing_secret_arn": "SIGNING_SECRET_ARN",
    "runpod_endpoints": "RUNPOD_ENDPOINTS",
    "gpu_prices": "GPU_PRICES",
    "global_concurrency": "GLOBAL_CONCURRENCY",
    "owner_concurrency": "OWNER_CONCURRENCY",
    "max_dispatch_attempts": "MAX_DISPATCH_ATTEMPTS",
    "max_auto_retries": "MAX_AUTO_RETRIES",
    "worker_silence_seconds": "WORKER_SILENCE_SECONDS",
    "runpod_max_retries": "RUNPOD_MAX_RETRIES",
    "runpod_backoff_seconds": "RUNPOD_BACKOFF_SECONDS",
    "runpod_timeout_seconds": "RUNPOD_TIMEOUT_SECONDS",
    "runpod_queue_ttl_seconds": "RUNPOD_QUEUE_TTL_SECONDS",
    "dispatch_retry_seconds": "DISPATCH_RETRY_SECONDS",
    "presign_ttl_seconds": "PRESIGN_TTL_SECONDS",
    "upload_ttl_seconds": "UPLOAD_TTL_SECONDS",
    "max_dataset_bytes": "MAX_DATASET_BYTES",
    "max_artifact_bytes": "MAX_ARTIFACT_BYTES",
    "allow_loopback_webhooks": "LORAFORGE_LOCAL_ALLOW_LOOPBACK",
    "local_signing_key": "LORAFORGE_LOCAL_SIGNING_KEY",
    "local_runpod_api_key": "LORAFORGE_LOCAL_RUNPOD_API_KEY",
}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    values = {field: os.environ[env] for field, env in _ENV.items() if os.environ.get(env) not in (None, "")}
    return Settings(**values)


def reset_settings() -> None:
    """Tests and the local stack change the environment; drop the cached settings (and clients)."""
    get_settings.cache_clear()
