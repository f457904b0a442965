"""POST /v1/hooks/runpod/{job}/{token}: RunPod's completion webhook (reference/runpod.md §3).

RunPod signs nothing, so: the path token is an HMAC of the job id (compared in constant time;
401 and nothing read on mismatch), the body's run must be the job's run, and a body that claims a
terminal state is only believed after `GET /status` says the same. Authentic but stale or
duplicate deliveries get 200 so RunPod stops retrying.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..dal.jobs_table import JobsTable
from ..models.errors import InvalidInput, NotFound, Unauthorized
from ..models.job import Job
from ..models.status import JobStatus
from ..observability import logger
from ..providers.runpod import RunPodError, RunPodJob, RunPodNotFound, get_runpod_client
from ..secrets_store import signing_key
from ..signing import constant_time_equals, runpod_hook_token
from .hook_reply import HookReply, RunPodUnreachable, applied, ignored
from .run_outcome import apply_runpod_status


class RunPodWebhookBody(RunPodJob):
    """The cloud body: `{delayTime, executionTime, id, input, output, status, webhook}` (input echoed)."""

    model_config = ConfigDict(extra="ignore")

    input: dict[str, Any] | None = None


class _EchoedInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    job_id: str
    attempt: int
    dispatch_token: str


def check_runpod_hook_token(job_id: str, token: str) -> None:
    if not constant_time_equals(token, runpod_hook_token(signing_key(), job_id)):
        raise Unauthorized("invalid hook token", code="INVALID_HOOK_TOKEN")


def apply_runpod_webhook(job_id: str, token: str, body: dict[str, Any] | None) -> HookReply:
    check_runpod_hook_token(job_id, token)
    try:
        delivery = RunPodWebhookBody.model_validate(body or {})
    except ValidationError as exc:
        raise InvalidInput("not a RunPod webhook body (id and status are required)", code="INVALID_WEBHOOK_BODY",
                           details=exc.errors(include_url=False, include_input=False)) from exc
    table = JobsTable()
    job = table.get_job(job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found", code="JOB_NOT_FOUND")
    logger.append_keys(job_id=job_id, runpod_job_id=delivery.id)
    adopting = job.runpod_job_id != delivery.id
    if adopting and not _is_lost_run_of(job, delivery):
        return ignored("not this job's current RunPod run")
    if not delivery.is_terminal:
        return ignored(f"RunPod status {delivery.status} is not final")
    if job.endpoint_id is None:
        return ignored("the job has no RunPod endpoint recorded")
    try:
        confirmed = get_runpod_client(quick=True).status(job.endpoint_id, delivery.id)
    except RunPodNotFound:
        return ignored("RunPod does not know this run (or no longer); reconcile settles the job")
    except RunPodError as exc:
        logger.warning("could not confirm a RunPod webhook", extra={"cause": str(exc)})
        raise RunPodUnreachable("RunPod /status could not confirm this delivery; deliver it again") from exc
    if not confirmed.is_terminal:
        logger.warning("webhook claims a final state RunPod does not confirm", extra={"claimed": delivery.status,
                                                                                     "confirmed": confirmed.status})
        return ignored(f"RunPod /status says {confirmed.status}, not {delivery.status}")
    if adopting:
        if not _adopt(table, job, delivery.id):
            return ignored("the job moved on before this run could be recorded")
        job = table.get_job(job_id) or job
    finished = apply_runpod_status(table, job, confirmed, source="runpod_webhook")
    return applied(f"job is {finished.status}") if finished else ignored("already applied")


def _is_lost_run_of(job: Job, delivery: RunPodWebhookBody) -> bool:
    """A /run whose answer we never got shows up here with our input echoed: if it carries the current dispatch
    token, it IS the job's run (e.g. it timed out in RunPod's queue), and its outcome settles the job now."""
    if job.runpod_job_id is not None or job.status != JobStatus.STARTING or not job.dispatch_token:
        return False
    try:
        echoed = _EchoedInput.model_validate(delivery.input or {})
    except ValidationError:
        return False
    return echoed.job_id == job.id and echoed.attempt == job.attempts and constant_time_equals(echoed.dispatch_token, job.dispatch_token)


def _adopt(table: JobsTable, job: Job, runpod_job_id: str) -> bool:
    adopted = table.update_job(
        job.id, set_fields={"runpod_job_id": runpod_job_id}, only_if_status=[JobStatus.STARTING],
        condition="dispatch_token = :tok AND (attribute_not_exists(runpod_job_id) OR attribute_type(runpod_job_id, :null))",
        values={":tok": job.dispatch_token, ":null": "NULL"},
    )
    if adopted:
        logger.info("adopted a RunPod run whose /run answer was lost", extra={"job_id": job.id, "runpod_job_id": runpod_job_id})
    return adopted
