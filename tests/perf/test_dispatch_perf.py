"""Dispatch throughput (issue 5): 100 queued jobs through the real stream handler against moto and the fake RunPod.

A benchmark, not a unit test: run with `make perf`. Prints jobs/s and the DynamoDB and HTTP calls per job.
Batches of 10 records, as the template's stream event source delivers them. Absolute speed depends on moto
and the machine; the per-job call counts do not, so those are asserted.
"""

from __future__ import annotations

import time

from loraforge.dal.clients import client
from loraforge.models import JobStatus
from loraforge.providers.runpod import get_runpod_client
from tests.integration.dispatch.conftest import configure, fake_runpod_server, plane, runpod  # noqa: F401 - fixtures
from tests.integration.dispatch.helpers import ControlPlane

JOBS = 100
BATCH = 10
MAX_DYNAMODB_CALLS_PER_JOB = 8  # get job, claim transaction, dataset, record run id, event (seq + put)


def time_aws_calls() -> list[float]:
    """Seconds spent inside boto3 calls (moto copies the whole table on every TransactWriteItems: it dominates)."""
    total, started = [0.0], {}

    def before(model, **_):
        started[model.name] = time.perf_counter()

    def after(model, **_):
        total[0] += time.perf_counter() - started.pop(model.name, time.perf_counter())

    for service in ("dynamodb", "s3", "secretsmanager"):
        events = client(service).meta.events
        events.register("before-call.*", before)
        events.register("after-call.*", after)
    return total


def time_runpod_calls() -> list[float]:
    total = [0.0]
    http = get_runpod_client()._http
    send = http.send

    def timed_send(*args, **kwargs):
        start = time.perf_counter()
        try:
            return send(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    http.send = timed_send  # type: ignore[method-assign]
    return total


def test_dispatch_100_queued_jobs(plane: ControlPlane, configure, dynamodb_calls) -> None:  # noqa: F811
    # Given 100 queued jobs from 10 owners and room for all of them
    configure(GLOBAL_CONCURRENCY=str(JOBS + 1), OWNER_CONCURRENCY=str(JOBS + 1))
    datasets = {f"owner-{i}": plane.seed_dataset(f"owner-{i}") for i in range(10)}
    jobs = [plane.seed_job(owner=f"owner-{i % 10}", dataset=datasets[f"owner-{i % 10}"]) for i in range(JOBS)]
    events = [plane.stream_event(*(plane.stream_record(j.id) for j in jobs[i:i + BATCH])) for i in range(0, JOBS, BATCH)]
    warm = plane.seed_job(owner="owner-0", dataset=datasets["owner-0"])
    plane.dispatch(warm.id)  # warm: imports, clients, secrets
    dynamodb_calls.clear()
    plane.runpod.calls.clear()
    aws_seconds = time_aws_calls()
    http_seconds = time_runpod_calls()

    # When every batch goes through the handler
    start = time.perf_counter()
    for event in events:
        assert plane.dispatch_event(event) == {"batchItemFailures": []}
    elapsed = time.perf_counter() - start

    # Then every job started once; report throughput and calls per job
    ddb_total = sum(dynamodb_calls.values())
    http_total = len(plane.runpod.calls)
    aws, http = aws_seconds[0], http_seconds[0]
    print(f"\ndispatch: {JOBS} jobs in {elapsed:.2f} s = {JOBS / elapsed:.1f} jobs/s (moto + fake RunPod, batches of {BATCH}); "
          f"DynamoDB calls/job {ddb_total / JOBS:.2f} ({dict(sorted(dynamodb_calls.items()))}); RunPod HTTP calls/job {http_total / JOBS:.2f}\n"
          f"  time per job: {1000 * elapsed / JOBS:.1f} ms = AWS (moto) {1000 * aws / JOBS:.1f} ms + RunPod (fake) {1000 * http / JOBS:.1f} ms"
          f" + loraforge code {1000 * (elapsed - aws - http) / JOBS:.1f} ms")
    assert all(plane.job(j.id).status == JobStatus.STARTING for j in jobs)
    assert all(len(plane.runpod.runs_for(j.id)) == 1 for j in jobs)
    assert http_total == JOBS
    assert ddb_total / JOBS <= MAX_DYNAMODB_CALLS_PER_JOB
