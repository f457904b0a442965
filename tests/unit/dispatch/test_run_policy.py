"""RunPod policy, backoff and the unknown-outcome wait: the numbers that keep a job from starting twice."""

from __future__ import annotations

from datetime import timedelta

import pytest

from loraforge.logic.dispatch import MAX_REDISPATCH_DELAY_SECONDS, redispatch_delay, unknown_outcome_deadline
from loraforge.logic.worker_input import RUNPOD_MAX_TTL_SECONDS, run_policy
from loraforge.models import Estimate, Job, JobStatus, utcnow
from loraforge.presets import get_preset
from loraforge.presets.cost_model import execution_timeout_seconds
from loraforge.settings import get_settings


def job_with_estimate(seconds: float) -> Job:
    preset = get_preset("flux-dev")
    now = utcnow()
    return Job(id="job_00000000000000000000", owner="u", status=JobStatus.QUEUED, preset=preset.id, dataset_id="ds_x",
               hyperparameters=preset.defaults, created_at=now, updated_at=now,
               estimate=Estimate(seconds=seconds, cost_usd=1.0, vram_gb=24, gpu_class="24gb", gpu_price_per_second=0.0002))


@pytest.mark.parametrize("seconds", [30.0, 3600.0, 20 * 3600.0, 10 * 24 * 3600.0])
def test_policy_gives_the_worker_time_to_stop_before_runpod_and_ttl_covers_queue_plus_run(seconds: float) -> None:
    job = job_with_estimate(seconds)
    assert job.estimate is not None

    policy = run_policy(job)

    assert policy.execution_timeout_seconds == execution_timeout_seconds(job.estimate)
    assert 60 <= policy.worker_time_limit_seconds <= policy.execution_timeout_seconds
    assert policy.ttl_seconds == min(RUNPOD_MAX_TTL_SECONDS, policy.execution_timeout_seconds + get_settings().runpod_queue_ttl_seconds)


def test_a_lost_run_is_only_replaced_after_its_ttl() -> None:
    job = job_with_estimate(3600.0).model_copy(update={"dispatched_at": utcnow()})
    assert job.dispatched_at is not None

    deadline = unknown_outcome_deadline(job)

    assert deadline is not None and deadline > job.dispatched_at + timedelta(seconds=run_policy(job).ttl_seconds)
    assert unknown_outcome_deadline(job.model_copy(update={"dispatched_at": None})) is None


def test_redispatch_delay_grows_and_is_capped() -> None:
    base = get_settings().dispatch_retry_seconds
    assert base * 0.8 <= redispatch_delay(1) <= base * 1.2
    assert base * 2 * 0.8 <= redispatch_delay(2) <= base * 2 * 1.2
    assert redispatch_delay(30) <= MAX_REDISPATCH_DELAY_SECONDS * 1.2
