"""What a notification says about a job's cost, and how sure that figure is (pure: no I/O).

DESIGN §8: the actual cost is RunPod's billed seconds (executionTime + delayTime) × the GPU class's price.
That figure reaches the job with RunPod's completion webhook or reconcile's `/status` poll, but the worker's
own `completed`/`failed` event often ends the job first, so when a terminal notification is written the
billed figure may not be recorded yet. One `CostStatement` per change states the best honest figure, and the
email, the user webhook and the EventBridge event all carry that same statement:

  billed   RunPod's billed time for every run of the job is recorded: `actual_usd` is the cost.
  partial  some runs are billed, not all (an automatic retry left an earlier run, or the last run, unbilled):
           `actual_usd` is a floor.
  pending  nothing billed yet. The run time loraforge measured (`Job.run_seconds`: each attempt's worker start
           to the end of its run, summed over the job's attempts, since RunPod bills every one) × the GPU price:
           a lower bound, since RunPod also bills queueing and cold start. When no worker started, only the
           estimate made before launch, labelled as one.
  none     the job ended before any RunPod run was recorded for it: there is nothing to bill.

A billed figure that arrives after the notification updates `GET /v1/jobs/{id}` (cost.actual_usd) and sends
nothing: DESIGN names no cost-updated event, and a second email per job would be noise.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from ..models.job import Job
from ..models.status import is_terminal


class Billing(StrEnum):
    BILLED = "billed"
    PARTIAL = "partial"
    PENDING = "pending"
    NONE = "none"


class CostStatement(BaseModel):
    job_id: str
    billing: Billing
    estimated_usd: float | None = None
    actual_usd: float | None = None
    billed_seconds: float | None = None
    billed_runs: int = 0
    measured_seconds: float | None = None
    measured_usd: float | None = None
    measured_attempts: int = 1
    """How many attempts `measured_seconds` spans (this job's: its first and each automatic retry)."""
    price_per_second: float | None = None

    def payload(self) -> dict[str, Any]:
        """`cost` in webhook and EventBridge bodies: the job's cost fields (as GET /v1/jobs/{id} shows them) plus
        `billing` (how final `actual_usd` is) and the measured figure when nothing is billed yet."""
        return {
            "estimated_usd": self.estimated_usd,
            "actual_usd": self.actual_usd,
            "billed_seconds": self.billed_seconds,
            "billing": str(self.billing),
            "measured_seconds": self.measured_seconds,
            "measured_usd": self.measured_usd,
        }

    def lines(self) -> list[str]:
        """The email's cost text: the figure first, then what it is based on and where the billed figure will be."""
        later = f"RunPod's billed figure, which also counts queueing and cold start, is added to GET /v1/jobs/{self.job_id} when RunPod reports it."
        estimate = f"Estimate made before launch, for the full run: {money(self.estimated_usd)}." if self.estimated_usd is not None else None
        match self.billing:
            case Billing.BILLED:
                runs = f" over {self.billed_runs} runs" if self.billed_runs > 1 else ""
                first = (f"{money(self.actual_usd)}, billed by RunPod for {_seconds(self.billed_seconds)} of GPU time{runs}{self._rate()}"
                         " (queueing and cold start included).")
                return _present([first, estimate])
            case Billing.PARTIAL:
                runs = "1 run" if self.billed_runs == 1 else f"{self.billed_runs} runs"
                first = (f"at least {money(self.actual_usd)}: RunPod has billed {runs} of this job so far,"
                         f" {_seconds(self.billed_seconds)} of GPU time{self._rate()}.")
                return _present([first, f"Runs it has not billed yet are added to GET /v1/jobs/{self.job_id} when RunPod reports them.", estimate])
            case Billing.NONE:
                return ["$0.00: the job ended before any RunPod run was recorded for it."]
        if self.measured_seconds is not None and self.measured_usd is not None:
            first = (f"about {money(self.measured_usd)} for {self._measured()} ({self._measured_how()}{self._rate(',')}).")
            return _present([first, later, estimate])
        if self.measured_seconds is not None:
            first = f"{self._measured()}; no GPU price is configured, so no dollar figure."
            return _present([first, later, estimate])
        if self.estimated_usd is not None:
            return [f"estimate {money(self.estimated_usd)} for the full run (made before launch, not measured;"
                    " RunPod has not billed this job yet).", later]
        return ["not known yet: RunPod has not billed this job and no estimate was made.", later]

    def _measured(self) -> str:
        over = f" over {self.measured_attempts} attempts" if self.measured_attempts > 1 else ""
        return f"{_duration(self.measured_seconds or 0.0)} of measured run time{over}"

    def _measured_how(self) -> str:
        return "each attempt's worker start to the end of its run" if self.measured_attempts > 1 else "the worker's start to the end of the run"

    def _rate(self, separator: str = "") -> str:
        return f"{separator} at ${self.price_per_second:g}/s" if self.price_per_second is not None else ""


def money(value: float | None) -> str | None:
    # Cents for ordinary amounts; sub-dime costs (short CPU or test runs) keep four decimals.
    return None if value is None else f"${value:.2f}" if value >= 0.1 else f"${value:.4f}"


def format_seconds(seconds: float) -> str:
    """1h 02m 03s / 4m 05s."""
    hours, rest = divmod(max(0, int(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _seconds(value: float | None) -> str:
    # Billed seconds as RunPod counts them, with the readable duration beside them.
    seconds = value or 0.0
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds:.0f} s ({format_seconds(seconds)})"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else format_seconds(seconds)


def _present(lines: list[str | None]) -> list[str]:
    return [line for line in lines if line]


def attempts_in_job(job: Job) -> int:
    """Attempts this job record ran: its first and one per automatic retry. A manual retry is a new job (`attempts` counts
    on from the job it retried, whose runs are billed on that job), so `attempts` itself is not this count."""
    return job.auto_retries + 1


def measured_run_seconds(job: Job) -> float | None:
    """The run time loraforge measured over every attempt of an ended job (finish_job adds each attempt's as it ends),
    never the first attempt's start to the last one's end; None while the job runs or when no worker ever started."""
    return job.run_seconds if is_terminal(job.status) else None


def cost_statement(job: Job, price_per_second: float | None = None) -> CostStatement:
    """The cost of `job` as its notification states it.

    `price_per_second`: the GPU class's price parameter (what `actual_usd` was computed with); None falls back on
    the price the estimate used.
    """
    price = price_per_second if price_per_second is not None else (job.estimate.gpu_price_per_second if job.estimate else None)
    cost = job.cost
    estimated = cost.estimated_usd if cost.estimated_usd is not None else (job.estimate.cost_usd if job.estimate else None)
    base = {"job_id": job.id, "estimated_usd": estimated, "actual_usd": cost.actual_usd, "billed_seconds": cost.billed_seconds,
            "price_per_second": price}
    if cost.actual_usd is not None:
        # A cost recorded before runs were tracked counts as one billed run.
        runs = max(len(job.billed_runs), 1)
        current_billed = job.runpod_job_id is None or job.runpod_job_id in job.billed_runs or not job.billed_runs
        # One RunPod run per attempt at most: fewer billed runs than attempts may leave an earlier run unbilled.
        complete = is_terminal(job.status) and current_billed and runs >= attempts_in_job(job)
        return CostStatement(billing=Billing.BILLED if complete else Billing.PARTIAL, billed_runs=runs, **base)
    if is_terminal(job.status) and job.runpod_job_id is None and attempts_in_job(job) == 1:
        return CostStatement(billing=Billing.NONE, **base)
    measured = measured_run_seconds(job)
    measured_usd = round(measured * price, 6) if measured is not None and price is not None else None
    return CostStatement(billing=Billing.PENDING, measured_seconds=measured, measured_usd=measured_usd,
                         measured_attempts=attempts_in_job(job), **base)
