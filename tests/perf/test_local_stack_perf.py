"""Benchmarks of the local stack (printed; run with `make perf`).

1. Control plane: from a drop-to-train zip landing in S3 to RunPod `/run` accepted — wall time, and the
   time the control plane itself spends (S3 put + ingest + dispatch handlers + pump overhead) without the
   pumps' poll waits — at the default poll interval (0.2 s) and a short one (0.02 s).
2. The demo (`loraforge demo`, in-process): wall time split into install-free start-up, drop → succeeded
   (and the job's own training time inside it) and finalisation. The issue's target: under 3 minutes.
"""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from loraforge.dal.jobs_table import JobsTable
from loraforge.local.demo import run_demo
from loraforge.local.demo_dataset import DEMO_IMAGES, build_demo_dataset, zip_dataset
from loraforge.local.pumps import Invocation
from loraforge.local.stack import LocalStack, LocalStackConfig

pytestmark = pytest.mark.slow
DROPS = 8


def _accepted_wall_time(stack: LocalStack, job_id: str, timeout: float = 60) -> float:
    """When the emulator accepted the /run for this job (its EmulatedJob.created, on the wall clock)."""
    assert stack.emulator is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stack.emulator._lock:
            for job in stack.emulator.jobs.values():
                if job.input.get("job_id") == job_id:
                    return time.time() - (time.monotonic() - job.created)
        time.sleep(0.005)
    raise AssertionError(f"/run for {job_id} was not accepted in {timeout} s")


def _job_for_key(stack: LocalStack, key: str, timeout: float = 60) -> str:
    owner = key.split("/")[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for dataset in JobsTable().list_datasets_by_owner(owner, limit=50).items:
            if dataset.source_key == key and dataset.job_id:
                return dataset.job_id
        time.sleep(0.02)
    raise AssertionError(f"no job for {key}")


def _measure_drops(poll_interval: float, tmp_path: Path) -> list[dict[str, float]]:
    folder = build_demo_dataset(tmp_path / "set", images=DEMO_IMAGES[:6])
    archive = zip_dataset(folder, tmp_path / "set.zip")
    config = LocalStackConfig(state_dir=tmp_path / f"state-{poll_interval}", workers=0, wait_for_workers=False, write_state=False,
                              poll_interval=poll_interval, reconcile_interval=3600,
                              environment={"GLOBAL_CONCURRENCY": "100", "OWNER_CONCURRENCY": "100"})
    rows = []
    with LocalStack(config) as stack:
        s3 = boto3.client("s3", endpoint_url=stack.info["aws_endpoint_url"], region_name="us-east-1")
        for index in range(DROPS + 1):
            key = f"incoming/alice/bench-{index}.zip"
            before = len(stack.history.snapshot())
            put_start = time.time()
            s3.upload_file(str(archive), stack.info["bucket"], key)
            put_end = time.time()
            job_id = _job_for_key(stack, key)
            accepted = _accepted_wall_time(stack, job_id)
            deadline = time.monotonic() + 30
            while True:  # an invocation is recorded when it returns: the dispatch that called /run is still writing
                calls: list[Invocation] = stack.history.snapshot()[before:]
                ingest = [c for c in calls if c.function == "IngestFunction" and key in c.subjects]
                dispatch = [c for c in calls if c.function == "DispatchFunction" and f"JOB#{job_id}" in c.subjects and c.started <= accepted]
                if (ingest and dispatch) or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            first_ingest, last_dispatch = ingest[0], dispatch[-1]
            # Poll waits: the S3 event sat in the capture queue until a poll read it, and the queued job's stream
            # record sat in the stream until the dispatch pump's poll read it. The rest is the control plane working.
            created = JobsTable().get_job(job_id).created_at.timestamp()
            poll_wait = max(0.0, first_ingest.picked_up - put_end) + max(0.0, last_dispatch.picked_up - created)
            wall = accepted - put_start
            if index:  # the first drop pays the handlers' imports (a Lambda cold start); report it apart
                rows.append({"wall": wall, "control_plane": wall - poll_wait, "ingest": first_ingest.duration,
                             "dispatch": last_dispatch.duration, "poll_wait": poll_wait})
            else:
                print(f"\n  cold first drop (handler imports): wall {wall * 1000:.0f} ms, control plane {(wall - poll_wait) * 1000:.0f} ms")
    return rows


def _median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows) * 1000


def test_control_plane_time_from_s3_to_runpod_run(tmp_path: Path) -> None:
    results: dict[float, list[dict[str, float]]] = {}
    for poll_interval in (0.2, 0.02):
        results[poll_interval] = _measure_drops(poll_interval, tmp_path)
        rows = results[poll_interval]
        print(f"  poll interval {poll_interval:.2f} s, {len(rows)} warm drops (median): zip in S3 → /run accepted {_median(rows, 'wall'):.0f} ms "
              f"wall = control plane {_median(rows, 'control_plane'):.0f} ms + pump poll waits {_median(rows, 'poll_wait'):.0f} ms "
              f"(handler time: ingest {_median(rows, 'ingest'):.0f} ms, dispatch {_median(rows, 'dispatch'):.0f} ms incl. its writes after /run)")
        # Two pump hops (S3 event → ingest, stream record → dispatch): each waits at most about one poll interval.
        assert 0 < _median(rows, "control_plane") <= _median(rows, "wall")
        assert _median(rows, "poll_wait") <= (2 * poll_interval + 0.25) * 1000
    # Note: faster polling is not free here: pumps, moto and the handlers share one process (and its GIL) on 2 cores,
    # so at 0.02 s the handlers themselves run slower; 0.2 s is the default.


def test_demo_wall_time_split(tmp_path: Path) -> None:
    out = io.StringIO()
    started = time.perf_counter()
    result = run_demo(tmp_path / "demo", state_dir=tmp_path / "state", out=out)
    total = time.perf_counter() - started
    timings: dict[str, Any] = result.timings

    assert result.job.get("status") == "succeeded", out.getvalue()[-3000:]
    print(f"\n  demo: total {total:.1f} s = start-up {timings['startup']:.1f} s + drop→succeeded {timings['pipeline']:.1f} s "
          f"(of which the worker's training run {timings.get('training', 0):.1f} s) + finalisation {timings['finalisation']:.1f} s "
          f"(+ {total - timings['startup'] - timings['pipeline'] - timings['finalisation']:.1f} s dataset build and stop)")
    assert total < 180, "the demo must finish in under 3 minutes on 2 cores"
