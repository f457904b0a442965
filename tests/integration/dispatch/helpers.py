"""The control loop under test: moto (aws_stack) + the fake RunPod server, driven through the real lambda_handlers.

`ControlPlane` seeds datasets and queued jobs, turns stored job items into DynamoDB stream records
(events/dynamodb_stream_job_queued.json with the real NewImage), and delivers RunPod webhooks and
signed worker events through the API function (events/apigw_v2_*_hook.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any

from pydantic_core import to_jsonable_python

from functions.api import app as api_app
from functions.dispatch import app as dispatch_app
from functions.reconcile import app as reconcile_app
from loraforge.contract import WorkerInput, WorkerResult
from loraforge.dal import keys
from loraforge.dal.clients import client
from loraforge.dal.jobs_table import JobsTable, job_pk
from loraforge.dal.storage import Storage
from loraforge.models import Artifact, ArtifactKind, Dataset, DatasetStatus, Job, JobStatus, Progress, new_id, utcnow
from loraforge.models.dataset import DatasetManifest, ManifestItem
from loraforge.models.job import CheckpointOptions, Cost
from loraforge.presets import get_preset, resolve_hyperparameters
from loraforge.presets.cost_model import estimate
from loraforge.secrets_store import signing_key
from loraforge.settings import get_settings
from loraforge.signing import job_secret, runpod_hook_token, signed_headers
from tests.support.events import load_event
from tests.support.fake_runpod import FakeRunPod

ENDPOINTS = {"cpu": "ep-cpu", "24gb": "ep-24gb"}
PRICES = {"cpu": 0.0002, "24gb": 0.00019}
PUBLIC_API_URL = "https://api.loraforge.test"
DISPATCH_TIMEOUT_MS = 60_000  # template.yaml DispatchFunction Timeout
RECONCILE_TIMEOUT_MS = 120_000  # template.yaml ReconcileFunction Timeout


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_handler_copy(name: str) -> ModuleType:
    """A second, independent import of functions/dispatch/app.py: another Lambda container (own BatchProcessor)."""
    spec = importlib.util.spec_from_file_location(f"dispatch_container_{name}", dispatch_app.__file__)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class HookAnswer:
    status: int
    body: dict[str, Any]


@dataclass
class ControlPlane:
    runpod: FakeRunPod
    context: Any
    table: JobsTable = field(default_factory=JobsTable)
    _clock: int = 0

    # -- seeding ----------------------------------------------------------------------------------
    def seed_dataset(self, owner: str = "user-a") -> Dataset:
        ds_id, now = new_id("ds"), utcnow()
        manifest_key = keys.dataset_manifest_key(owner, ds_id)
        dataset = Dataset(id=ds_id, owner=owner, name="chars", status=DatasetStatus.READY, created_at=now, updated_at=now,
                          archive_key=keys.dataset_archive_key(owner, ds_id), manifest_key=manifest_key, archive_sha256=sha(ds_id),
                          archive_size=1234)
        self.table.create_dataset(dataset)
        Storage().put_bytes(dataset.archive_key, b"PK\x05\x06" + b"\0" * 18)
        manifest = DatasetManifest(dataset_id=ds_id, archive_key=dataset.archive_key, archive_sha256=dataset.archive_sha256, archive_size=1234,
                                   accepted=[ManifestItem(key="chars/a.png", size=1000, sha256=sha("a"), width=512, height=512, caption="ohwx")])
        Storage().put_json(manifest_key, manifest.model_dump(mode="json"))
        return dataset

    def seed_job(self, owner: str = "user-a", *, dataset: Dataset | None = None, preset: str = "tiny-sd",
                 steps: int | None = None, keep: int = 4, **changes: Any) -> Job:
        """A queued job as create_job writes it; each one 1 s younger than the last, so queue order is creation order."""
        dataset = dataset or self.seed_dataset(owner)
        p = get_preset(preset)
        hp = resolve_hyperparameters(p, {"steps": steps} if steps else None)
        est = estimate(p, hp, image_count=10, min_image_side=512, gpu_price_per_second=PRICES[p.gpu_class], gpu_class=p.gpu_class)
        self._clock += 1
        created = utcnow() - timedelta(hours=1) + timedelta(seconds=self._clock)
        job = Job(id=new_id("job"), owner=owner, status=JobStatus.QUEUED, preset=p.id, dataset_id=dataset.id, trigger_word="ohwx",
                  hyperparameters=hp, checkpoints=CheckpointOptions(every=max(1, hp.steps // 4), keep=keep),
                  progress=Progress(total_steps=hp.steps), cost=Cost(estimated_usd=est.cost_usd), estimate=est, gpu_class=p.gpu_class,
                  created_at=created, updated_at=created)
        job = job.model_copy(update=changes)
        self.table.create_job(job)
        return job

    def running_job(self, **seed: Any) -> Job:
        """A seeded job, dispatched, whose worker has started (its `started` event accepted)."""
        job = self.seed_job(**seed)
        self.dispatch(job.id)
        answer = self.start_worker(job.id)
        assert answer.status == 200, answer.body
        return self.job(job.id)

    def job(self, job_id: str) -> Job:
        job = self.table.get_job(job_id)
        assert job is not None
        return job

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Simulate time passing / state set by another party (non-status fields only)."""
        self.table.update_job(job_id, set_fields={k: to_jsonable_python(v) for k, v in fields.items()})

    def active_ids(self) -> set[str]:
        return {j.id for s in (JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING)
                for j in self.table.list_jobs_by_status(s, limit=100).items}

    # -- stream -> dispatch ------------------------------------------------------------------------
    def stream_record(self, job_id: str, sample: str = "dynamodb_stream_job_queued") -> dict[str, Any]:
        """A stream record shaped like `events/<sample>.json` (INSERT, or MODIFY for a re-queue) whose NewImage is the stored item."""
        item = client("dynamodb").get_item(TableName=self.table.name, Key={"pk": {"S": job_pk(job_id)}, "sk": {"S": "META"}},
                                           ConsistentRead=True)["Item"]
        record = load_event(sample)["Records"][0]
        record["eventID"] = uuid.uuid4().hex
        record["dynamodb"]["Keys"] = {"pk": item["pk"], "sk": item["sk"]}
        record["dynamodb"]["NewImage"] = item
        return record

    def stream_event(self, *records: dict[str, Any]) -> dict[str, Any]:
        return {"Records": list(records)}

    def invocation(self, timeout_ms: int) -> Any:
        """A fresh Lambda context per invocation, with the function's timeout from template.yaml."""
        return dataclasses.replace(self.context, timeout_ms=timeout_ms, _started=time.monotonic())

    def dispatch(self, *job_ids: str, handler: ModuleType = dispatch_app) -> dict[str, Any]:
        return self.dispatch_event(self.stream_event(*(self.stream_record(j) for j in job_ids)), handler=handler)

    def dispatch_event(self, event: dict[str, Any], handler: ModuleType = dispatch_app) -> dict[str, Any]:
        return handler.lambda_handler(event, self.invocation(DISPATCH_TIMEOUT_MS))

    def reconcile(self) -> dict[str, Any]:
        return reconcile_app.lambda_handler(load_event("schedule_reconcile"), self.invocation(RECONCILE_TIMEOUT_MS))

    # -- RunPod --------------------------------------------------------------------------------
    def worker_input(self, job_id: str) -> WorkerInput:
        runs = self.runpod.runs_for(job_id)
        assert runs, f"no /run for {job_id}"
        return WorkerInput.model_validate(runs[-1].input)

    def runpod_id(self, job_id: str) -> str:
        run_id = self.job(job_id).runpod_job_id
        assert run_id, f"{job_id} has no RunPod run recorded"
        return run_id

    def result(self, job: Job, *, steps: int | None = None, status: str = "completed", error: dict[str, Any] | None = None) -> dict[str, Any]:
        """A worker result manifest whose final file lies under the job's prefix."""
        total = steps or job.hyperparameters.steps
        final = Artifact(kind=ArtifactKind.FINAL, step=total, key=keys.job_artifact_key(job.owner, job.id, "final", "ohwx.safetensors"),
                         size=4096, sha256=sha(job.id + "final"), name="ohwx.safetensors")
        return WorkerResult(job_id=job.id, attempt=job.attempts, status=status, steps=total, total_steps=total, final_loss=0.08,  # type: ignore[arg-type]
                            final=final if status == "completed" else None, error=error).model_dump(mode="json")

    def checkpoint(self, job: Job, step: int, kind: ArtifactKind = ArtifactKind.CHECKPOINT) -> Artifact:
        name = f"ohwx_{step:09d}.safetensors" if kind == ArtifactKind.CHECKPOINT else f"optimizer_{step:09d}.pt"
        key = keys.job_artifact_key(job.owner, job.id, str(kind), name)
        Storage().put_bytes(key, f"weights-{step}".encode())
        return Artifact(kind=kind, step=step, key=key, size=10, sha256=sha(key), name=name)

    # -- hooks through the API function ----------------------------------------------------------------
    def _api(self, event: dict[str, Any]) -> HookAnswer:
        response = api_app.lambda_handler(event, self.context)
        return HookAnswer(response["statusCode"], json.loads(response.get("body") or "{}"))

    def runpod_webhook(self, job_id: str, body: dict[str, Any], token: str | None = None) -> HookAnswer:
        token = token if token is not None else runpod_hook_token(signing_key(), job_id)
        event = load_event("apigw_v2_runpod_hook")
        path = f"/v1/hooks/runpod/{job_id}/{token}"
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["pathParameters"] = {"job": job_id, "token": token}
        event["body"] = json.dumps(body)
        event["headers"]["content-length"] = str(len(event["body"]))
        return self._api(event)

    def worker_event(self, job_id: str, type_: str, seq: int, data: dict[str, Any] | None = None, *, attempt: int | None = None,
                     secret: str | None = None, timestamp: int | None = None, at: datetime | None = None,
                     tamper: bool = False, runpod_job_id: str | None = None) -> HookAnswer:
        """POST a signed worker event; `tamper` changes the body after signing (what an attacker in the middle would do).

        `runpod_job_id`: the RunPod run the sending worker names on its events (left out: a worker older than the field)."""
        attempt = attempt if attempt is not None else self.job(job_id).attempts
        fields = {"job_id": job_id, "attempt": attempt, "seq": seq, "type": type_, "at": to_jsonable_python(at or utcnow()), "data": data or {}}
        if runpod_job_id is not None:
            fields["runpod_job_id"] = runpod_job_id
        body = json.dumps(fields).encode()
        headers = signed_headers(secret or job_secret(signing_key(), job_id), f"msg_{job_id}_{attempt}_{seq}", body, timestamp)
        if tamper:
            body = body.replace(b'"seq": ', b'"seq": 1')
        event = load_event("apigw_v2_worker_hook")
        path = f"/v1/hooks/worker/{job_id}"
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["pathParameters"] = {"job": job_id}
        event["headers"] = {**{k: v for k, v in event["headers"].items() if not k.startswith("webhook-")}, **headers,
                            "content-length": str(len(body))}
        event["body"] = body.decode()
        return self._api(event)

    def start_worker(self, job_id: str, *, runpod_job_id: str | None = None, token: str | None = None, seq: int = 1) -> HookAnswer:
        """The worker's first event, as the real worker sends it (dispatch token + its RunPod job id)."""
        job = self.job(job_id)
        run_id = runpod_job_id or self.runpod_id(job_id)
        if run_id in self.runpod.jobs:
            self.runpod.start_job(run_id)
        return self.worker_event(job_id, "started", seq, {"dispatch_token": token or job.dispatch_token, "runpod_job_id": run_id},
                                 runpod_job_id=run_id)

    def finish_on_runpod(self, job_id: str, *, execution_ms: int = 60_000, delay_ms: int = 1_500) -> dict[str, Any]:
        """RunPod completes the job's run with a valid result; returns the webhook body the cloud would send."""
        run_id = self.runpod_id(job_id)
        self.runpod.complete(run_id, self.result(self.job(job_id)), execution_ms=execution_ms, delay_ms=delay_ms)
        return self.runpod.webhook_body(run_id)


def stored_artifact(job: Job, kind: ArtifactKind, name: str, step: int) -> Artifact:
    """A file the worker uploaded under the job's prefix, as its event describes it (the bytes are in S3)."""
    key = keys.job_artifact_key(job.owner, job.id, str(kind), name)
    body = f"{name}-bytes".encode()
    Storage().put_bytes(key, body)
    return Artifact(kind=kind, step=step, key=key, size=len(body), sha256=hashlib.sha256(body).hexdigest(), name=name)


def price(gpu_class: str = "cpu") -> float:
    return get_settings().gpu_prices[gpu_class]
