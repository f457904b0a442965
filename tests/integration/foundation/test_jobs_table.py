"""JobsTable against moto server (issue 2 acceptance): claims, capacity, paging, isolation."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from loraforge.dal.jobs_table import CapacityFull, JobsTable
from loraforge.models import (
    Artifact,
    EventType,
    Hyperparameters,
    InvalidInput,
    InvalidTransition,
    Job,
    JobStatus,
    MetricPoint,
    new_id,
    utcnow,
)
from loraforge.settings import reset_settings

HP = Hyperparameters(steps=10, learning_rate=1e-2, rank=4, alpha=4, batch_size=1, resolution=64, optimizer="adamw")


def make_job(owner: str = "alice", offset_ms: int = 0) -> Job:
    now = utcnow() + timedelta(milliseconds=offset_ms)
    return Job(id=new_id("job"), owner=owner, status=JobStatus.QUEUED, preset="tiny-sd", dataset_id="ds_" + "0" * 20,
               hyperparameters=HP, created_at=now, updated_at=now)


@pytest.fixture
def table(aws_stack) -> JobsTable:
    return JobsTable()


@pytest.fixture
def capacity(monkeypatch):
    def set_capacity(global_limit: int, owner_limit: int) -> None:
        monkeypatch.setenv("GLOBAL_CONCURRENCY", str(global_limit))
        monkeypatch.setenv("OWNER_CONCURRENCY", str(owner_limit))
        reset_settings()

    return set_capacity


def test_create_get_round_trips_a_job(table, dynamodb_calls):
    # Given a new job
    job = make_job()
    # When it is created and read back
    table.create_job(job)
    got = table.get_job(job.id)
    # Then it is the same job, at the cost of one write and one read
    assert got == job
    assert dynamodb_calls["PutItem"] == 1 and dynamodb_calls["GetItem"] == 1


def test_two_concurrent_claims_of_one_job_exactly_one_wins(table, capacity):
    # Given one queued job and plenty of capacity
    capacity(10, 10)
    job = table.create_job(make_job())
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def claim() -> None:
        barrier.wait()
        try:
            table.transition(job, JobStatus.STARTING)
            outcomes.append("won")
        except InvalidTransition:
            outcomes.append("lost")

    # When two dispatchers claim it at once
    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly one wins and exactly one slot is taken
    assert sorted(outcomes) == ["lost", "won"]
    assert table.get_job(job.id).status == JobStatus.STARTING
    assert table.capacity_holders() == {job.id}


def test_fifty_threads_never_exceed_global_capacity(table, capacity):
    # Given 50 queued jobs of 10 owners and a global capacity of 5
    capacity(5, 50)
    jobs = [table.create_job(make_job(owner=f"owner{i % 10}", offset_ms=i)) for i in range(50)]
    barrier = threading.Barrier(50)

    def claim(job: Job) -> bool:
        barrier.wait()
        try:
            table.transition(job, JobStatus.STARTING)
            return True
        except CapacityFull:
            return False

    # When 50 threads claim them all at once
    with ThreadPoolExecutor(max_workers=50) as pool:
        won = sum(pool.map(claim, jobs))
    # Then never more than 5 are active, and the semaphore agrees with the jobs
    active = table.list_jobs_by_status(JobStatus.STARTING, limit=100).items
    assert won == len(active) <= 5
    assert table.capacity_holders() == {j.id for j in active}


def test_owner_capacity_limits_one_owner_but_not_another(table, capacity):
    # Given an owner limit of 1
    capacity(10, 1)
    a1, a2, b1 = (table.create_job(make_job("alice", 1)), table.create_job(make_job("alice", 2)), table.create_job(make_job("bob", 3)))
    # When alice claims two and bob one
    table.transition(a1, JobStatus.STARTING)
    with pytest.raises(CapacityFull) as full:
        table.transition(a2, JobStatus.STARTING)
    table.transition(b1, JobStatus.STARTING)
    # Then alice's second waits (owner scope) while bob runs
    assert full.value.scope == "owner"
    assert table.get_job(a2.id).status == JobStatus.QUEUED
    assert table.capacity_holders("alice") == {a1.id} and table.capacity_holders("bob") == {b1.id}


def test_a_terminal_transition_frees_its_slot_in_the_same_transaction(table, capacity, dynamodb_calls):
    # Given a capacity of 1 held by a running job
    capacity(1, 1)
    first, second = table.create_job(make_job(offset_ms=1)), table.create_job(make_job(offset_ms=2))
    running = table.transition(table.transition(first, JobStatus.STARTING), JobStatus.RUNNING)
    with pytest.raises(CapacityFull):
        table.transition(second, JobStatus.STARTING)
    dynamodb_calls.clear()
    # When the running job succeeds
    done = table.transition(running, JobStatus.SUCCEEDED)
    # Then one transaction wrote both, the slot is free, the next job can start, and the job left the status index
    assert dynamodb_calls == {"TransactWriteItems": 1}
    assert done.finished_at is not None and table.capacity_holders() == set()
    table.transition(second, JobStatus.STARTING)
    assert [j.id for j in table.list_jobs_by_status(JobStatus.RUNNING).items] == []


def test_terminal_states_never_change_and_stale_versions_lose(table):
    job = table.create_job(make_job())
    cancelled = table.transition(job, JobStatus.CANCELLED)
    # When anything tries to move a terminal job, or a writer uses a stale copy
    with pytest.raises(InvalidTransition):
        table.transition(cancelled, JobStatus.QUEUED)
    with pytest.raises(InvalidTransition):
        table.transition(job, JobStatus.STARTING)  # stale: still says queued v0
    # Then the stored job is still cancelled
    assert table.get_job(job.id).status == JobStatus.CANCELLED


def test_transitions_keep_concurrent_progress_and_event_counter(table, capacity):
    capacity(5, 5)
    job = table.transition(table.create_job(make_job()), JobStatus.STARTING)
    running = table.transition(job, JobStatus.RUNNING)
    table.append_event(job.id, EventType.PROGRESS, {"step": 5})
    assert table.update_job(job.id, set_fields={"progress": {"step": 5, "total_steps": 10, "percent": 50.0}})
    # When a transition is written from a copy read before the progress update
    table.transition(running, JobStatus.SUCCEEDED)
    # Then the progress and the event sequence survive it
    stored = table.get_job(job.id)
    assert stored.progress.step == 5
    assert table.append_event(job.id, EventType.COMPLETED).seq == 2


def test_listing_a_thousand_jobs_pages_through_each_exactly_once(table):
    # Given 1,000 jobs of alice and 30 of bob
    jobs = [make_job("alice", offset_ms=i) for i in range(1000)]
    for j in jobs:
        table.create_job(j)
    for i in range(30):
        table.create_job(make_job("bob", offset_ms=i))
    # When alice pages through her jobs 73 at a time
    seen: list[str] = []
    cursor = None
    while True:
        page = table.list_jobs_by_owner("alice", limit=73, cursor=cursor)
        seen.extend(j.id for j in page.items)
        assert all(j.owner == "alice" for j in page.items)
        cursor = page.next_cursor
        if not cursor:
            break
    # Then every job appears exactly once, newest first, and no bob job appears
    assert len(seen) == 1000 and set(seen) == {j.id for j in jobs}
    assert seen == [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]


def test_a_cursor_from_another_owner_or_garbage_is_refused(table):
    for i in range(3):
        table.create_job(make_job("alice", offset_ms=i))
    cursor = table.list_jobs_by_owner("alice", limit=1).next_cursor
    # When bob replays alice's cursor, or anyone sends garbage / Then it is a clear INVALID_CURSOR
    for bad in (cursor, "not-base64!!", "e30"):
        with pytest.raises(InvalidInput) as err:
            table.list_jobs_by_owner("bob", limit=1, cursor=bad)
        assert err.value.code == "INVALID_CURSOR"


def test_the_queue_lists_oldest_first_and_forgets_finished_jobs(table):
    jobs = [table.create_job(make_job(offset_ms=i)) for i in range(5)]
    table.transition(jobs[0], JobStatus.CANCELLED)
    queued = table.list_jobs_by_status(JobStatus.QUEUED).items
    assert [j.id for j in queued] == [j.id for j in jobs[1:]]


def test_another_owners_job_is_not_found(table):
    job = table.create_job(make_job("alice"))
    from loraforge.models import NotFound

    with pytest.raises(NotFound):
        table.get_job_for_owner(job.id, "bob")
    assert table.get_job_for_owner(job.id, "alice").id == job.id


def test_events_are_sequenced_and_deduplicated(table):
    job = table.create_job(make_job())
    first = table.append_event(job.id, EventType.PROGRESS, {"step": 1}, dedupe_key="w1-1")
    again = table.append_event(job.id, EventType.PROGRESS, {"step": 1}, dedupe_key="w1-1")
    second = table.append_event(job.id, EventType.PROGRESS, {"step": 2}, dedupe_key="w1-2")
    assert again is None
    assert [e.seq for e in table.list_events(job.id)] == [first.seq, second.seq]
    assert [e.data["step"] for e in table.list_events(job.id, after=first.seq)] == [2]


def test_metrics_and_artifacts_are_idempotent(table):
    job = table.create_job(make_job())
    points = [MetricPoint(step=s, loss=1.0 / (s + 1), lr=1e-2) for s in range(40)]
    table.put_metrics(job.id, points)
    table.put_metrics(job.id, points[:10])
    art = Artifact(kind="checkpoint", step=10, key=f"jobs/alice/{job.id}/checkpoints/a.safetensors", size=3, sha256="a" * 64)
    table.put_artifact(job.id, art)
    table.put_artifact(job.id, art)
    assert [m.step for m in table.list_metrics(job.id)] == list(range(40))
    assert len(table.list_artifacts(job.id)) == 1 and table.list_artifacts(job.id, "final") == []
