"""Actual cost of a job: RunPod's billed time × the GPU class's price parameter (DESIGN §8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..dal.jobs_table import JobsTable
from ..models.job import Cost, Job
from ..observability import logger
from ..settings import get_settings

if TYPE_CHECKING:  # the notify function prices its cost statements here; the RunPod client (httpx) stays off its cold path
    from ..providers.runpod import RunPodJob


def gpu_price_per_second(job: Job) -> float | None:
    """The price parameter of the job's GPU class; the estimate's price if the class has none configured."""
    gpu_class = job.gpu_class or (job.estimate.gpu_class if job.estimate else None)
    prices = get_settings().gpu_prices
    if gpu_class and gpu_class in prices:
        return prices[gpu_class]
    return job.estimate.gpu_price_per_second if job.estimate else None


def record_run_cost(table: JobsTable, job: Job, run: RunPodJob) -> bool:
    """Add one finished RunPod run to the job's cost, once per RunPod job id (webhooks and polls repeat).

    billed seconds = (executionTime + delayTime) / 1000: delayTime includes the billed cold start.
    Every run of the job counts (an automatic retry is a second run on the same job). Returns True
    when this call added the run. 1 conditional update.
    """
    billed = run.billed_seconds
    price = gpu_price_per_second(job)
    if billed is None or price is None or run.id in job.billed_runs:
        return False
    seconds = round((job.cost.billed_seconds or 0.0) + billed, 3)
    cost = Cost(estimated_usd=job.cost.estimated_usd, billed_seconds=seconds, actual_usd=round(seconds * price, 6))
    # `size` guards against two different runs being added from the same stale read; `contains` against a repeat.
    added = table.update_job(
        job.id, set_fields={"cost": cost.model_dump(mode="json"), "billed_runs": [*job.billed_runs, run.id]},
        condition="(attribute_not_exists(billed_runs) OR size(billed_runs) = :n) AND NOT contains(billed_runs, :run)",
        values={":n": len(job.billed_runs), ":run": run.id},
    )
    if added:
        job.cost, job.billed_runs = cost, [*job.billed_runs, run.id]
        logger.info("run cost recorded", extra={"job_id": job.id, "runpod_job_id": run.id, "billed_seconds": billed, "usd": cost.actual_usd})
    return added
