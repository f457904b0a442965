"""Cancel a job (POST /v1/jobs/{id}/cancel; DESIGN §8).

queued -> cancelled at once (RunPod never hears of it). An active job becomes `cancelling` and
RunPod gets one `/cancel`; the terminal state then comes from whichever of the RunPod webhook,
the worker's `cancelled` event or reconcile sees the end first (a run that completes before the
cancel reaches it stays succeeded). A claimed job with no RunPod run yet (a /run in flight or of
unknown outcome) is cancelled at once: the dispatcher stops the run when its /run returns, and a
late worker is refused with 409 before it trains.
"""

from __future__ import annotations

from ..dal.jobs_table import JobsTable
from ..models.errors import Conflict, InvalidTransition
from ..models.event import EventType
from ..models.job import Job
from ..models.status import JobStatus, is_terminal
from ..observability import logger
from ..providers.runpod import RunPodError, RunPodNotFound, get_runpod_client
from .checkpoints import newest_checkpoint
from .finish_job import Outcome, finish_job
from .lora_result import lora_result

MAX_RACE_RETRIES = 4


def cancel_job(owner: str, job_id: str, keep_latest: bool) -> Job:
    """Returns the job after the request (cancelled, or cancelling until RunPod confirms). 404 for another owner's job."""
    table = JobsTable()
    job = table.get_job_for_owner(job_id, owner)
    for _ in range(MAX_RACE_RETRIES):
        if is_terminal(job.status):
            raise Conflict(f"job {job_id} already finished ({job.status})", code="JOB_ALREADY_FINISHED",
                           details={"status": str(job.status)})
        if job.status == JobStatus.CANCELLING:
            if keep_latest and not job.keep_latest:
                table.update_job(job.id, set_fields={"keep_latest": True}, only_if_status=[JobStatus.CANCELLING])
                job = job.model_copy(update={"keep_latest": True})
            return job
        target = JobStatus.CANCELLED if job.status == JobStatus.QUEUED else JobStatus.CANCELLING
        try:
            moved = table.transition(job, target, cancel_requested=True, keep_latest=keep_latest)
        except InvalidTransition:
            fresh = table.get_job(job.id)
            assert fresh is not None
            job = fresh
            continue
        if target == JobStatus.CANCELLED:
            # A re-queued attempt may have checkpoints from its earlier run: keep_latest makes the newest the result.
            table.append_event(job.id, EventType.CANCELLED, {"source": "cancel", "keep_latest": keep_latest, "was": str(job.status)})
            return _keep_latest_result(table, moved) if keep_latest else moved
        return _stop_run(table, moved)
    raise Conflict(f"job {job_id} is changing too fast to cancel; try again", code="CONCURRENT_UPDATE")


def _keep_latest_result(table: JobsTable, job: Job) -> Job:
    stored = newest_checkpoint(table, job)
    if stored is None:
        return job
    result = lora_result(stored.files, steps=stored.step)
    table.update_job(job.id, set_fields={"result": result.model_dump(mode="json")}, only_if_status=[JobStatus.CANCELLED])
    return job.model_copy(update={"result": result})


def _stop_run(table: JobsTable, job: Job) -> Job:
    """`job` is cancelling: send RunPod one /cancel, or finish at once when there is no RunPod run to stop."""
    # Re-read after our transition: a RunPod id recorded before it is visible now; one recorded after it cannot be
    # (the dispatcher records only while `starting`) and that dispatcher stops its run itself.
    fresh = table.get_job(job.id) or job
    if fresh.runpod_job_id is None or fresh.endpoint_id is None:
        table.append_event(job.id, EventType.CANCEL_REQUESTED, {"keep_latest": job.keep_latest, "runpod_cancel": "no run yet"})
        finished = finish_job(table, fresh, Outcome(status="cancelled", source="cancel"))
        return finished or table.get_job(job.id) or fresh
    try:
        get_runpod_client(quick=True).cancel(fresh.endpoint_id, fresh.runpod_job_id)
        sent = "sent"
    except RunPodNotFound:
        sent = "run not found on RunPod (reconcile settles it)"
    except RunPodError as exc:
        sent = f"failed: {exc} (reconcile sends it again)"
        logger.warning("RunPod /cancel failed", extra={"job_id": job.id, "cause": str(exc)})
    table.append_event(job.id, EventType.CANCEL_REQUESTED, {"keep_latest": job.keep_latest, "runpod_job_id": fresh.runpod_job_id,
                                                            "runpod_cancel": sent})
    return fresh
