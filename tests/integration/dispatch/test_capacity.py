"""Capacity: never more active jobs than the limit; each end of a run starts the oldest queued job."""

from __future__ import annotations

from loraforge.models import JobStatus
from tests.integration.dispatch.helpers import ControlPlane


def test_limit_two_with_five_queued_runs_two_at_a_time_oldest_first(plane: ControlPlane, configure) -> None:
    # Given a global limit of 2 and 5 queued jobs (two owners)
    configure(GLOBAL_CONCURRENCY="2", OWNER_CONCURRENCY="2")
    jobs = [plane.seed_job(owner="user-a" if i % 2 == 0 else "user-b") for i in range(5)]
    ids = [j.id for j in jobs]

    # When all their stream records reach dispatch in one batch
    plane.dispatch(*ids)

    # Then the two oldest run and three wait
    assert plane.active_ids() == set(ids[:2])
    assert plane.table.capacity_holders() == set(ids[:2])
    assert [plane.job(i).status for i in ids[2:]] == [JobStatus.QUEUED] * 3
    started_order = [ids[:2]]

    # When each active run ends in turn, the next oldest job starts at once, and never more than 2 are active
    for finished in ids:
        if plane.job(finished).status != JobStatus.STARTING:
            continue
        plane.start_worker(finished)
        before = plane.active_ids()
        plane.runpod_webhook(finished, plane.finish_on_runpod(finished))
        assert plane.job(finished).status == JobStatus.SUCCEEDED
        active = plane.active_ids()
        assert len(active) <= 2 and plane.table.capacity_holders() == active
        started_order.append(sorted(active - before))

    # Then every job ran once, in creation order
    assert all(plane.job(i).status == JobStatus.SUCCEEDED for i in ids)
    assert [i for group in started_order for i in group] == ids
    assert all(len(plane.runpod.runs_for(i)) == 1 for i in ids)


def test_owner_limit_lets_another_owners_job_go_first(plane: ControlPlane, configure) -> None:
    # Given an owner limit of 1, and user-a's two jobs queued before user-b's
    configure(GLOBAL_CONCURRENCY="4", OWNER_CONCURRENCY="1")
    a1, a2 = plane.seed_job(owner="user-a"), plane.seed_job(owner="user-a")
    b1 = plane.seed_job(owner="user-b")

    # When all are dispatched
    plane.dispatch(a1.id, a2.id, b1.id)

    # Then user-a runs one, user-b is not held back by user-a's queue
    assert plane.active_ids() == {a1.id, b1.id}
    assert plane.job(a2.id).status == JobStatus.QUEUED

    # When user-a's run ends, user-a's next job starts
    plane.start_worker(a1.id)
    plane.runpod_webhook(a1.id, plane.finish_on_runpod(a1.id))
    assert plane.job(a2.id).status == JobStatus.STARTING


def test_the_api_starts_the_next_job_with_callbacks_to_the_api_the_hook_came_through(plane: ControlPlane, configure) -> None:
    # Given one slot, a running job and a queued one, and an API function that is not told its own URL (the template cannot:
    # ApiFunction -> HttpApi -> ApiFunction would be a cycle), only dispatch is
    configure(GLOBAL_CONCURRENCY="1", OWNER_CONCURRENCY="1")
    first, second = plane.seed_job(), plane.seed_job()
    plane.dispatch(first.id, second.id)
    plane.start_worker(first.id)
    assert plane.job(second.id).status == JobStatus.QUEUED
    configure(PUBLIC_API_URL="")

    # When RunPod's completion webhook for the first run reaches the API (through API Gateway's execute-api host)
    plane.runpod_webhook(first.id, plane.finish_on_runpod(first.id))

    # Then the API hands the slot to the queued job at once, and that run calls back to the API the webhook came through
    assert plane.job(first.id).status == JobStatus.SUCCEEDED
    assert plane.job(second.id).status == JobStatus.STARTING
    run = plane.runpod.only_run_for(second.id)
    base = "https://k7p2m9x4qd.execute-api.us-east-1.amazonaws.com"  # requestContext.domainName of events/apigw_v2_runpod_hook.json
    assert run.webhook is not None and run.webhook.startswith(f"{base}/v1/hooks/runpod/{second.id}/")
    assert plane.worker_input(second.id).callback.url == f"{base}/v1/hooks/worker/{second.id}"
