"""What a job's notifications say about its cost when RunPod's billed figure is known, when only the run time loraforge
measured is, and when nothing but the estimate is; and that the email, the webhook and the EventBridge event agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta

import pytest

from loraforge.logic.notify import EnqueueWebhook, PutBusEvent, SendEmail, plan_job_change
from loraforge.models import Artifact, ArtifactKind, Cost, ErrorKind, Hyperparameters, Job, JobError, JobResult, JobStatus, utcnow
from loraforge.models.job import Estimate, NotifyOptions
from loraforge.notifications.cost_statement import Billing, cost_statement
from loraforge.notifications.email_messages import job_email
from loraforge.settings import reset_settings

HP = Hyperparameters(steps=2000, learning_rate=1e-4, rank=16, alpha=16, batch_size=4, resolution=1024, optimizer="adamw8bit")
NOW = utcnow()
PRICE = 0.00019  # $/s of the 24gb class in these tests
ESTIMATE = Estimate(seconds=3300, cost_usd=0.63, vram_gb=20, gpu_class="24gb", gpu_price_per_second=PRICE)
JOB_ID = "job_01jd4q2w8e6r4t2y0u8i"


def finished_job(status: JobStatus = JobStatus.SUCCEEDED, **changes) -> Job:
    """A first-attempt job whose worker started 57m 30s before the run ended (finish_job recorded that run time), on RunPod
    run rp-1, not billed yet."""
    lora = Artifact(kind=ArtifactKind.FINAL, step=2000, key=f"jobs/user-b/{JOB_ID}/final/portrait.safetensors", size=1000, sha256="ab" * 32)
    started = NOW - timedelta(minutes=57, seconds=30)
    base = Job(id=JOB_ID, owner="user-b", status=status, name="portrait set", preset="sdxl", dataset_id="ds_01jd4q0a2s4d6f8g0h2j",
               hyperparameters=HP, created_at=NOW - timedelta(hours=1), updated_at=NOW, started_at=started, attempt_started_at=started,
               run_seconds=3450.0, finished_at=NOW, estimate=ESTIMATE, cost=Cost(estimated_usd=0.63), gpu_class="24gb", runpod_job_id="rp-1",
               endpoint_id="ep", version=4, notify=NotifyOptions(email="me@example.com", webhook_url="https://hooks.example.com/loraforge"),
               result=JobResult(lora=lora, steps=2000, final_loss=0.09) if status == JobStatus.SUCCEEDED else None,
               error=JobError(code="GPU_OOM", message="oom", kind=ErrorKind.USER) if status == JobStatus.FAILED else None)
    return base.model_copy(update=changes)


NEVER_STARTED = {"started_at": None, "attempt_started_at": None, "run_seconds": None}
"""No attempt's worker ever sent an event: nothing was measured."""


def auto_retried_job(status: JobStatus = JobStatus.SUCCEEDED, **changes) -> Job:
    """Attempt 2 after an automatic retry of a system failure, not billed yet: created 1h 05m before the end; attempt 1's
    worker started 60 min before the end and ran 20 min; the job then waited 25 min in the queue; attempt 2's worker
    started 15 min before the end. finish_job added each attempt's run time as it ended: 20m + 15m."""
    retried = {"attempts": 2, "auto_retries": 1, "runpod_job_id": "rp-2", "created_at": NOW - timedelta(minutes=65),
               "started_at": NOW - timedelta(minutes=60), "attempt_started_at": NOW - timedelta(minutes=15), "run_seconds": 2100.0}
    return finished_job(status, **(retried | changes))


def billed(job: Job, usd: float, seconds: float, *runs: str) -> Job:
    return job.model_copy(update={"cost": Cost(estimated_usd=job.cost.estimated_usd, actual_usd=usd, billed_seconds=seconds),
                                  "billed_runs": list(runs)})


def cost_text(body: str) -> str:
    """The email's Cost row and its continuation lines, joined."""
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  Cost "))
    rows = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 14):  # a continuation row has an empty label
            break
        rows.append(line)
    return " ".join(line.strip() for line in rows).removeprefix("Cost").strip()


def test_a_billed_cost_is_stated_with_its_billed_seconds():
    # Given a job whose run RunPod billed before the job turned succeeded (its webhook came first)
    job = billed(finished_job(), 0.66, 3472.0, "rp-1")
    # When its email is written
    text = cost_text(job_email(job, previous_status=JobStatus.RUNNING, bucket="b", cost=cost_statement(job, PRICE)).body)
    # Then the cost is RunPod's figure with the billed seconds and the price, and the estimate beside it
    assert text.startswith("$0.66, billed by RunPod for 3472 s (57m 52s) of GPU time at $0.00019/s")
    assert "Estimate made before launch, for the full run: $0.63" in text
    assert "about" not in text and "measured" not in text


def test_only_the_measured_run_time_known_gives_an_approximate_cost_and_says_where_the_billed_one_will_be():
    # Given a job the worker's completed event ended before RunPod billed the run
    job = finished_job()
    # When its email is written
    text = cost_text(job_email(job, previous_status=JobStatus.RUNNING, bucket="b", cost=cost_statement(job, PRICE)).body)
    # Then it gives the measured run time x the GPU price, says it is measured and that the billed figure (with cold start)
    # lands on the job resource, and still shows the estimate; never a bare "not billed yet"
    measured_usd = round(3450 * PRICE, 2)
    assert text.startswith(f"about ${measured_usd:.2f} for 57m 30s of measured run time (the worker's start to the end of the run, at $0.00019/s)")
    assert f"RunPod's billed figure, which also counts queueing and cold start, is added to GET /v1/jobs/{JOB_ID}" in text
    assert "Estimate made before launch, for the full run: $0.63" in text
    assert "not billed yet" not in text


@pytest.mark.parametrize("why", ["the worker never started", "no worker of an automatically retried job started"])
def test_with_nothing_but_the_estimate_the_email_says_it_is_an_estimate(why):
    # Given a failed job RunPod has not billed and whose runs loraforge could not measure
    job = (finished_job(JobStatus.FAILED, **NEVER_STARTED) if why == "the worker never started"
           else auto_retried_job(JobStatus.FAILED, **NEVER_STARTED))
    # When its email is written
    text = cost_text(job_email(job, previous_status=JobStatus.RUNNING, bucket="b", cost=cost_statement(job, PRICE)).body)
    # Then the figure is the estimate, labelled as one (made before launch, not measured), and says where the billed figure will be
    assert text.startswith("estimate $0.63 for the full run (made before launch, not measured; RunPod has not billed this job yet)")
    assert f"GET /v1/jobs/{JOB_ID}" in text
    assert "about" not in text


def test_a_retried_job_with_some_runs_billed_states_a_floor_not_a_total():
    # Given attempt 2 succeeded; RunPod billed attempt 1's run but not yet the run that ended the job
    job = billed(auto_retried_job(), 0.31, 1634.0, "rp-1")
    # When its email is written
    statement = cost_statement(job, PRICE)
    text = cost_text(job_email(job, previous_status=JobStatus.RUNNING, bucket="b", cost=statement).body)
    # Then the billed amount is stated as "at least", with what is still to come
    assert statement.billing == Billing.PARTIAL
    assert text.startswith("at least $0.31: RunPod has billed 1 run of this job so far, 1634 s (27m 14s) of GPU time")
    assert "Runs it has not billed yet are added to GET /v1/jobs/" in text


def test_every_run_of_a_retried_job_billed_is_the_total():
    # Given attempt 2 succeeded and both attempts' runs are billed
    job = billed(auto_retried_job(), 0.93, 4890.0, "rp-1", "rp-2")
    # When its email is written / Then it is the billed total over both runs
    text = cost_text(job_email(job, previous_status=JobStatus.RUNNING, bucket="b", cost=cost_statement(job, PRICE)).body)
    assert text.startswith("$0.93, billed by RunPod for 4890 s (1h 21m 30s) of GPU time over 2 runs")


def test_a_job_that_never_reached_runpod_costs_nothing():
    # Given a job cancelled while it was still queued (no RunPod run)
    job = finished_job(JobStatus.CANCELLED, runpod_job_id=None, endpoint_id=None, **NEVER_STARTED)
    # When its email is written / Then it says $0.00 and why
    text = cost_text(job_email(job, previous_status=JobStatus.QUEUED, bucket="b", cost=cost_statement(job, PRICE)).body)
    assert text == "$0.00: the job ended before any RunPod run was recorded for it."


# -- jobs on their second attempt ------------------------------------------------------------------------
def duration_row(body: str) -> str:
    [row] = [line.strip() for line in body.splitlines() if line.startswith("  Duration ")]
    return row.removeprefix("Duration").strip()


def test_an_automatically_retried_job_is_priced_on_the_run_time_of_both_attempts_not_the_span_from_the_first_start():
    # Given attempt 2 of an automatically retried job, ended by its worker's completed event before RunPod billed either run:
    # attempt 1 ran 20 min, the job then waited 25 min in the queue, attempt 2 ran 15 min
    job = auto_retried_job()
    # When its notifications are written
    statement = cost_statement(job, PRICE)
    body = job_email(job, previous_status=JobStatus.RUNNING, bucket="b", cost=statement).body
    # Then the measured figure is both runs, 20m + 15m, x the price: never the first attempt's start to the second's end
    # (1h, queue wait included), never the last attempt alone (15m); RunPod bills every attempt's run
    assert statement.billing == Billing.PENDING
    assert statement.measured_seconds == 2100.0 and statement.measured_usd == pytest.approx(2100 * PRICE)
    assert cost_text(body).startswith(f"about ${2100 * PRICE:.2f} for 35m 00s of measured run time over 2 attempts (each attempt's worker"
                                      " start to the end of its run, at $0.00019/s).")
    # and the Duration row says what it measures: the run time over both attempts, then the wall time since the job was created
    assert duration_row(body) == "run time 35m 00s over 2 attempts; 1h 05m 00s since created"


def test_a_manual_retry_is_measured_and_billed_on_its_own_run():
    # Given a job made by POST /v1/jobs/{id}/retry (attempt 2, a new job; attempt 1's run is billed on the job it retried)
    # whose one run its worker ended 57m 30s after it started, not billed yet
    job = finished_job(attempts=2, retry_of="job_01jd4q0000000000000a", runpod_job_id="rp-2")
    # When its notifications are written
    statement = cost_statement(job, PRICE)
    body = job_email(job, previous_status=JobStatus.RUNNING, bucket="b", cost=statement).body
    # Then its own measured run is priced (not an estimate because the attempt number is 2), over one attempt
    assert statement.measured_seconds == 3450.0 and statement.measured_usd == pytest.approx(3450 * PRICE)
    assert cost_text(body).startswith(f"about ${3450 * PRICE:.2f} for 57m 30s of measured run time (the worker's start to the end of the run")
    assert duration_row(body) == "run time 57m 30s; 1h 00m 00s since created"

    # When RunPod has billed that one run
    billed_statement = cost_statement(billed(job, 0.66, 3472.0, "rp-2"), PRICE)
    # Then that is the job's whole cost, not "at least ... so far"
    assert billed_statement.billing == Billing.BILLED and billed_statement.lines()[0].startswith("$0.66, billed by RunPod for 3472 s")


def test_a_manual_retry_cancelled_while_queued_costs_nothing():
    # Given a job made by POST /v1/jobs/{id}/retry and cancelled before it was dispatched
    job = finished_job(JobStatus.CANCELLED, attempts=2, retry_of="job_01jd4q0000000000000a", runpod_job_id=None, endpoint_id=None,
                       **NEVER_STARTED)
    # When its email is written
    body = job_email(job, previous_status=JobStatus.QUEUED, bucket="b", cost=cost_statement(job, PRICE)).body
    # Then it cost nothing, and the Duration row measures no run time
    assert cost_text(body) == "$0.00: the job ended before any RunPod run was recorded for it."
    assert duration_row(body) == "1h 00m 00s since created; no run time measured"


def test_a_running_email_shows_the_estimate_not_a_cost_row():
    # Given a job that just started (notify.on_running), nothing billed
    job = finished_job(JobStatus.RUNNING, finished_at=None, result=None)
    # When its email is written / Then the estimate has its own row and there is no cost row to misread
    body = job_email(job, previous_status=JobStatus.STARTING, bucket="b", cost=cost_statement(job, PRICE)).body
    assert "  Estimate    about 55m 00s, $0.63" in body
    assert "  Cost " not in body


# -- one statement on every channel ------------------------------------------------------------------
CASES = {
    "billed": (billed(finished_job(), 0.66, 3472.0, "rp-1"), "billed", 0.66, None),
    "measured": (finished_job(), "pending", None, round(3450 * PRICE, 6)),
    "estimate only": (finished_job(JobStatus.FAILED, **NEVER_STARTED), "pending", None, None),
    "measured over two attempts": (auto_retried_job(), "pending", None, round(2100 * PRICE, 6)),
}


@pytest.fixture
def gpu_prices(monkeypatch):
    monkeypatch.setenv("GPU_PRICES", json.dumps({"24gb": PRICE}))
    reset_settings()
    yield
    reset_settings()


@pytest.mark.parametrize("case", CASES)
def test_the_email_webhook_and_event_of_one_change_state_the_same_cost(case, gpu_prices):
    # Given a job's running -> terminal change, with RunPod's figure known, only the measured time, or only the estimate
    job, billing, actual_usd, measured_usd = CASES[case]
    # When the notify function plans it
    actions = plan_job_change(job, JobStatus.RUNNING, inserted=False, bucket="b")
    [email] = [a.message for a in actions if isinstance(a, SendEmail)]
    [webhook] = [json.loads(a.delivery.payload) for a in actions if isinstance(a, EnqueueWebhook)]
    [event] = [a.event for a in actions if isinstance(a, PutBusEvent)]
    # Then webhook data.cost and the event's detail.cost are the same: actual_usd null until billed, the estimate, how final it is
    cost = webhook["data"]["cost"]
    assert cost == event.detail["cost"]
    assert (cost["billing"], cost["actual_usd"], cost["estimated_usd"]) == (billing, actual_usd, 0.63)
    assert cost["measured_usd"] == pytest.approx(measured_usd) if measured_usd else cost["measured_usd"] is None
    # and the email states the same figure
    text = cost_text(email.body)
    shown = actual_usd if actual_usd is not None else measured_usd if measured_usd is not None else cost["estimated_usd"]
    assert re.match(rf"^(about |estimate )?\${shown:.2f}\b", text), text
    # and the rest of the job resource is unchanged (data is the job as GET /v1/jobs/{{id}} shows it)
    public = job.public()
    assert {k: v for k, v in webhook["data"].items() if k != "cost"} == {k: v for k, v in public.items() if k != "cost"}
    assert {k: cost[k] for k in public["cost"]} == public["cost"]


def test_the_measured_figure_uses_the_gpu_class_price_like_the_billed_one(monkeypatch):
    # Given the stack's price for the class differs from the one the estimate used
    monkeypatch.setenv("GPU_PRICES", json.dumps({"24gb": 0.0004}))
    reset_settings()
    try:
        # When a job the worker ended is planned
        actions = plan_job_change(finished_job(), JobStatus.RUNNING, inserted=False, bucket="b")
    finally:
        reset_settings()
    # Then the measured cost is priced with the class's price parameter (what actual_usd will use)
    [event] = [a.event for a in actions if isinstance(a, PutBusEvent)]
    assert event.detail["cost"]["measured_usd"] == pytest.approx(3450 * 0.0004)


def test_the_notify_function_prices_costs_without_loading_the_runpod_client():
    # Given a fresh interpreter (a cold Lambda) / When it imports the notify logic
    code = "import sys, loraforge.logic.notify; print('httpx' in sys.modules, 'loraforge.providers.runpod' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # Then neither httpx nor the RunPod client is imported (only the webhook delivery function needs httpx)
    assert out == ["False", "False"]
