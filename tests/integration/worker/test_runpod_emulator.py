"""The RunPod platform emulator's own semantics (public endpoint API, worker API, webhooks, faults, workers).

The worker-facing calls here are made the way the runpod SDK makes them (URLs, bodies, query flags);
the real SDK loop against this emulator is exercised in test_emulator_worker.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from loraforge.local.runpod_emulator import RunPodEmulator
from loraforge_worker.engines.process import group_alive


class HookServer:
    """Records webhook POSTs; answers with the scripted status codes in order, then 200."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes = list(codes or [])
        self.bodies: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                server.bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(server.codes.pop(0) if server.codes else 200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook/token"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def emu():
    emulator = RunPodEmulator(workers=0, endpoint_id="ep1", webhook_retry_delay=0.05, long_poll_seconds=0.3,
                              min_execution_timeout_ms=200, min_ttl_ms=200).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def api(emu):
    with httpx.Client(base_url=emu.endpoint_url, timeout=10) as client:
        yield client


@pytest.fixture
def hook():
    server = HookServer()
    yield server
    server.close()


def take(emu: RunPodEmulator, worker: str = "w1") -> httpx.Response:
    # The SDK's job-take URL: RUNPOD_WEBHOOK_GET_JOB with $ID replaced by the worker id, plus job_in_progress
    return httpx.get(f"{emu.endpoint_url}/job-take/{worker}?gpu=emulated&job_in_progress=0", timeout=5)


def done(emu: RunPodEmulator, job_id: str, body: dict, worker: str = "w1") -> httpx.Response:
    # The SDK posts JSON text with a form content type to RUNPOD_WEBHOOK_POST_OUTPUT + &isStream=false
    return httpx.post(f"{emu.endpoint_url}/job-done/{worker}/{job_id}?gpu=emulated&isStream=false", content=json.dumps(body),
                      headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)


def wait_hooks(hook: HookServer, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(hook.bodies) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_job_goes_in_queue_in_progress_completed_with_timings_progress_and_the_cloud_webhook(emu, api, hook):
    run = api.post("/run", json={"input": {"prompt": "x"}, "webhook": hook.url}).json()
    assert run["status"] == "IN_QUEUE" and run["id"].endswith("-u1")
    assert api.get(f"/status/{run['id']}").json()["status"] == "IN_QUEUE"

    job = take(emu).json()
    assert job == {"id": run["id"], "input": {"prompt": "x"}}
    time.sleep(0.05)
    done(emu, run["id"], {"status": "IN_PROGRESS", "output": {"step": 3, "total_steps": 10}})
    status = api.get(f"/status/{run['id']}").json()
    assert status["status"] == "IN_PROGRESS" and status["output"] == {"step": 3, "total_steps": 10} and status["executionTime"] > 0

    done(emu, run["id"], {"output": {"status": "completed", "final": "k"}})
    done(emu, run["id"], {"status": "IN_PROGRESS", "output": {"step": 9}})  # a late progress_update must not reopen it
    status = api.get(f"/status/{run['id']}").json()
    assert status["status"] == "COMPLETED" and status["output"] == {"status": "completed", "final": "k"}
    assert status["delayTime"] >= 0 and status["executionTime"] >= 50

    wait_hooks(hook, 1)
    (body,) = hook.bodies
    assert set(body) == {"delayTime", "executionTime", "id", "input", "output", "status", "webhook"}
    assert body["id"] == run["id"] and body["status"] == "COMPLETED" and body["input"] == {"prompt": "x"} and body["webhook"] == hook.url


def test_a_failed_job_keeps_its_manifest_and_its_webhook_carries_the_error(emu, api, hook):
    run_id = api.post("/run", json={"input": {}, "webhook": hook.url}).json()["id"]
    take(emu)
    done(emu, run_id, {"error": "GPU_OOM: out of memory", "output": {"status": "failed", "steps": 4}})
    status = api.get(f"/status/{run_id}").json()
    assert status["status"] == "FAILED" and status["error"] == "GPU_OOM: out of memory" and status["output"]["steps"] == 4
    wait_hooks(hook, 1)
    assert hook.bodies[0]["status"] == "FAILED" and hook.bodies[0]["error"] == "GPU_OOM: out of memory"


def test_webhooks_are_retried_twice_then_given_up_and_can_be_dropped(emu, api):
    flaky, dead = HookServer([500, 404]), HookServer([500, 500, 500, 500])
    try:
        for server in (flaky, dead):
            run_id = api.post("/run", json={"input": {}, "webhook": server.url}).json()["id"]
            take(emu)
            done(emu, run_id, {"output": {"ok": True}})
        wait_hooks(flaky, 3)
        wait_hooks(dead, 3)
        time.sleep(0.2)
        assert len(flaky.bodies) == 3 and len(dead.bodies) == 3  # 1 + 2 retries, never more
        assert [d.attempts for d in emu.webhooks] == [[500, 404, 200], [500, 500, 500]]

        emu.fault(drop_webhooks=1)
        run_id = api.post("/run", json={"input": {}, "webhook": flaky.url}).json()["id"]
        take(emu)
        done(emu, run_id, {"output": {}})
        time.sleep(0.3)
        assert len(flaky.bodies) == 3 and emu.webhooks[-1].dropped
    finally:
        flaky.close()
        dead.close()


def test_run_can_be_made_to_fail_with_429_and_5xx(emu, api):
    emu.fault(fail_run=2, fail_run_status=429)
    emu.fault(fail_run=1, fail_run_status=503)
    assert [api.post("/run", json={"input": {}}).status_code for _ in range(4)] == [429, 429, 503, 200]
    with pytest.raises(ValueError):
        emu.fault(fail_run=1, fail_run_status=404)


def test_cancel_removes_a_queued_job_and_stops_a_running_one_through_job_stop(emu, api, hook):
    queued = api.post("/run", json={"input": {"n": 1}, "webhook": hook.url}).json()["id"]
    assert api.post(f"/cancel/{queued}").json() == {"id": queued, "status": "CANCELLED"}
    assert take(emu).status_code == 204  # nothing left to take

    running = api.post("/run", json={"input": {"n": 2}}).json()["id"]
    take(emu)
    assert httpx.get(f"{emu.endpoint_url}/job-stop/w1?gpu=emulated", timeout=5).status_code == 204
    assert api.post(f"/cancel/{running}").json()["status"] == "CANCELLED"
    assert httpx.get(f"{emu.endpoint_url}/job-stop/w1?gpu=emulated", timeout=5).json() == {"jobsToStop": [running]}
    done(emu, running, {"output": {"late": True}})  # a handler that ignored the stop cannot turn it into COMPLETED
    assert api.get(f"/status/{running}").json()["status"] == "CANCELLED"
    wait_hooks(hook, 1)
    assert hook.bodies[0]["status"] == "CANCELLED"
    assert api.post("/cancel/unknown-id").status_code == 404


def test_execution_timeout_and_ttl_time_jobs_out(emu, api):
    running = api.post("/run", json={"input": {}, "policy": {"executionTimeout": 300, "ttl": 60_000}}).json()["id"]
    take(emu)
    queued = api.post("/run", json={"input": {}, "policy": {"ttl": 300}}).json()["id"]
    time.sleep(0.8)
    assert api.get(f"/status/{running}").json()["status"] == "TIMED_OUT"
    assert api.get(f"/status/{queued}").json()["status"] == "TIMED_OUT"
    assert httpx.get(f"{emu.endpoint_url}/job-stop/w1?gpu=emulated", timeout=5).json() == {"jobsToStop": [running]}
    assert api.post("/run", json={"input": {}, "policy": {"executionTimeout": 1}}).status_code == 400


def test_results_are_kept_for_the_retention_period_then_404(api):
    emulator = RunPodEmulator(workers=0, endpoint_id="ep2", result_retention_seconds=0.3, long_poll_seconds=0.2).start()
    try:
        with httpx.Client(base_url=emulator.endpoint_url, timeout=5) as client:
            run_id = client.post("/run", json={"input": {}}).json()["id"]
            take(emulator)
            done(emulator, run_id, {"output": {}})
            assert client.get(f"/status/{run_id}").status_code == 200
            time.sleep(0.8)
            assert client.get(f"/status/{run_id}").status_code == 404
    finally:
        emulator.stop()


def test_retry_health_and_purge_queue(emu, api):
    failed = api.post("/run", json={"input": {}}).json()["id"]
    take(emu)
    done(emu, failed, {"error": "boom"})
    assert api.post(f"/retry/{failed}").json() == {"id": failed, "status": "IN_QUEUE"}
    api.post("/run", json={"input": {}})
    health = api.get("/health").json()
    assert health["jobs"]["inQueue"] == 2 and health["jobs"]["failed"] == 1 and health["jobs"]["retried"] == 1
    assert health["workers"] == {"idle": 1, "running": 0}  # w1 registered by polling, now idle
    assert api.post("/purge-queue").json() == {"removed": 2, "status": "completed"}
    assert api.get(f"/status/{failed}").status_code == 404


def test_bad_bodies_and_unknown_routes(emu, api):
    assert api.post("/run", json={"prompt": "no input key"}).status_code == 400
    assert api.post("/run", content=b"not json").status_code == 400
    assert api.get("/status/nope").status_code == 404
    assert httpx.get(f"{emu.base_url}/other-endpoint/health", timeout=5).status_code == 404


def test_api_key_is_required_when_configured():
    emulator = RunPodEmulator(workers=0, endpoint_id="ep3", api_key="rk_local").start()
    try:
        url = emulator.endpoint_url
        assert httpx.get(f"{url}/health", timeout=5).status_code == 401
        assert httpx.get(f"{url}/health", headers={"authorization": "Bearer rk_local"}, timeout=5).status_code == 200
        assert httpx.get(f"{url}/health", headers={"authorization": "rk_local"}, timeout=5).status_code == 200
    finally:
        emulator.stop()


def test_binds_to_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        RunPodEmulator(workers=0, host="0.0.0.0")


STUB_WORKER = textwrap.dedent("""
    # Stands in for handler.py: starts an "engine" in its own session (like the real worker), then idles.
    import subprocess, sys, time
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    print("engine", engine.pid, flush=True)
    time.sleep(300)
""")


def engine_pid(emu: RunPodEmulator, worker_id: str) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in emu.worker_log(worker_id).splitlines():
            if line.startswith("engine "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise TimeoutError("stub worker did not start")


def test_a_dead_worker_fails_its_job_and_is_replaced_and_stop_leaves_no_process(tmp_path: Path):
    stub = tmp_path / "stub_handler.py"
    stub.write_text(STUB_WORKER)
    emu = RunPodEmulator(workers=1, endpoint_id="ep4", handler_path=stub, long_poll_seconds=0.3).start()
    try:
        (first,) = list(emu.workers)
        first_engine = engine_pid(emu, first)
        with httpx.Client(base_url=emu.endpoint_url, timeout=5) as api:
            run_id = api.post("/run", json={"input": {}}).json()["id"]
            assert take(emu, first).json()["id"] == run_id
            # When the worker holding the job is killed (its whole tree, like a container)
            emu.fault(kill_worker_for_job=run_id)
            # Then the job is FAILED, the worker's engine died with it, and a new worker replaces it
            status = emu.wait_for_status(run_id, timeout=10)
            assert status["status"] == "FAILED" and "exited" in status["error"]
        assert not _alive(first_engine)
        deadline = time.monotonic() + 10
        while (not emu.workers or first in emu.workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        (second,) = list(emu.workers)
        assert second != first
        second_pid, second_engine = emu.workers[second].popen.pid, engine_pid(emu, second)
    finally:
        emu.stop()
    # And stop() leaves neither the worker nor the engine it started in another session
    assert not _alive(second_pid) and not _alive(second_engine)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_runs_as_a_module_and_stops_on_sigint():
    proc = subprocess.Popen([sys.executable, "-m", "loraforge.local.runpod_emulator", "--port", "0", "--workers", "0",
                             "--endpoint-id", "cli-ep"], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        base = line.split(" on ", 1)[1].split(" ", 1)[0]
        assert base.startswith("http://127.0.0.1:") and base.endswith("/v2")
        assert httpx.get(f"{base}/cli-ep/health", timeout=5).json()["jobs"]["inQueue"] == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not group_alive(proc.pid)


def test_a_worker_stopped_for_a_timeout_takes_no_new_job_that_its_stop_would_kill(tmp_path: Path):
    # Given a spawned worker whose job ran past its executionTimeout (RunPod stops the worker a grace period later)
    stub = tmp_path / "stub_handler.py"
    stub.write_text(STUB_WORKER)
    emu = RunPodEmulator(workers=1, endpoint_id="ep5", handler_path=stub, long_poll_seconds=0.3, min_execution_timeout_ms=200,
                         timeout_kill_grace_seconds=1.0).start()
    try:
        (first,) = list(emu.workers)
        engine_pid(emu, first)
        with httpx.Client(base_url=emu.endpoint_url, timeout=5) as api:
            timed_out = api.post("/run", json={"input": {}, "policy": {"executionTimeout": 300}}).json()["id"]
            assert take(emu, first).json()["id"] == timed_out
            assert emu.wait_for_status(timed_out, timeout=5)["status"] == "TIMED_OUT"
            # When another job arrives and that worker's SDK loop (its handler done with the stop) asks for work before it is stopped
            innocent = api.post("/run", json={"input": {"n": 2}}).json()["id"]
            offered = take(emu, first)
            # Then it is not handed the job, which waits for a worker that will live to run it
            assert offered.status_code == 204
            deadline = time.monotonic() + 10
            while (not emu.workers or first in emu.workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            (second,) = list(emu.workers)
            assert api.get(f"/status/{innocent}").json()["status"] == "IN_QUEUE"
            assert take(emu, second).json()["id"] == innocent
    finally:
        emu.stop()
