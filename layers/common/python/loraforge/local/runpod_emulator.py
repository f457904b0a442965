"""A local emulator of RunPod's serverless platform (DESIGN §10), loopback only, for the local stack and tests.

Two faces, like the real platform (reference/runpod.md §2-3):

Public endpoint API (what the Lambda client calls; base URL `<url>/v2`):
  POST /v2/{endpoint}/run {input, webhook?, policy?{executionTimeout, ttl}}  → {"id", "status": "IN_QUEUE"}
  GET  /v2/{endpoint}/status/{id}   → {delayTime, executionTime, id, status, output?, error?}
  POST /v2/{endpoint}/cancel/{id}   → {"id", "status"}          POST /v2/{endpoint}/retry/{id} (FAILED/TIMED_OUT)
  GET  /v2/{endpoint}/health        → {jobs: {...}, workers: {idle, running}}
  POST /v2/{endpoint}/purge-queue   → {"removed": n, "status": "completed"}
  Statuses IN_QUEUE → IN_PROGRESS → COMPLETED | FAILED | CANCELLED | TIMED_OUT. `executionTimeout`
  (default 600 s) and `ttl` (default 24 h, counted from submission) are enforced; finished jobs are
  kept `result_retention_seconds` (30 min), then /status answers 404. `progress_update` posts show
  on /status as `output` while the job is IN_PROGRESS. With `api_key` set, every public call needs
  `authorization: <key>` or `Bearer <key>`.
  Completion webhook: POST of the cloud body `{delayTime, executionTime, id, input, output, status,
  webhook}` (plus `error` for FAILED) for every terminal status; a reply other than 200 is retried
  `webhook_attempts - 1` more times `webhook_retry_delay` seconds apart (RunPod: 2 more, 10 s apart).

Worker-facing API (what the REAL `runpod` SDK worker loop calls, configured through
`RUNPOD_WEBHOOK_GET_JOB`, `RUNPOD_WEBHOOK_POST_OUTPUT`, `RUNPOD_WEBHOOK_POST_STREAM`, `RUNPOD_POD_ID`):
  GET  /v2/{endpoint}/job-take/{worker}?…          long-poll; a job `{id, input}` or 204
  GET  /v2/{endpoint}/job-stop/{worker}?…          long-poll; `{"jobsToStop": [ids]}` or 204 (cancel, timeout)
  POST /v2/{endpoint}/job-done/{worker}/{job}?…&isStream=false   the result, or {"status": "IN_PROGRESS", "output"} progress
  POST /v2/{endpoint}/job-stream/{worker}/{job}?…  stream chunks (kept, not served)

It spawns N real `handler_image/handler.py` processes (`python -u handler.py`, cwd = a scratch
folder, fitness checks skipped) and restarts a worker that dies; the job a dead worker held
becomes FAILED. Fault knobs (`fault()`, or POST /_emulator/fault): fail the next N /run calls with
429/5xx, drop the next N webhooks, kill the worker running a job (the whole process tree, like a
container dying).

Python: `RunPodEmulator(workers=N, endpoint_id="local-cpu").start()` … `.stop()`; CLI:
`python -m loraforge.local.runpod_emulator --port P --workers N`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
DEFAULT_HANDLER = Path(__file__).resolve().parents[5] / "handler_image" / "handler.py"
MAX_RUN_BODY = 10 * 1024 * 1024
MAX_DONE_BODY = 20 * 1024 * 1024
MIN_EXECUTION_TIMEOUT_MS, MAX_EXECUTION_TIMEOUT_MS = 5_000, 7 * 24 * 3600 * 1000
MIN_TTL_MS, MAX_TTL_MS = 10_000, 7 * 24 * 3600 * 1000


@dataclass
class EmulatedJob:
    id: str
    input: dict[str, Any]
    webhook: str | None
    execution_timeout_ms: int
    ttl_ms: int
    created: float = field(default_factory=time.monotonic)
    status: str = "IN_QUEUE"
    started: float | None = None
    finished: float | None = None
    worker_id: str | None = None
    output: Any = None
    error: Any = None
    progress: Any = None
    stream: list[Any] = field(default_factory=list)
    retried: int = 0

    def delay_ms(self, now: float) -> int:
        return int(((self.started if self.started is not None else (self.finished or now)) - self.created) * 1000)

    def execution_ms(self, now: float) -> int:
        if self.started is None:
            return 0
        return int(((self.finished or now) - self.started) * 1000)

    def public(self, now: float) -> dict[str, Any]:
        body: dict[str, Any] = {"delayTime": self.delay_ms(now), "executionTime": self.execution_ms(now), "id": self.id, "status": self.status}
        if self.status == "IN_PROGRESS" and self.progress is not None:
            body["output"] = self.progress
        elif self.status in TERMINAL and self.output is not None:
            body["output"] = self.output
        if self.status == "FAILED" and self.error is not None:
            body["error"] = self.error
        return body


@dataclass
class WorkerProcess:
    """A worker the emulator spawned, or an external one (popen None) that registered by polling job-take."""

    id: str
    popen: subprocess.Popen[bytes] | None
    log_path: Path | None
    started: float = field(default_factory=time.monotonic)
    last_poll: float | None = None
    stop_requests: deque[str] = field(default_factory=deque)
    kill_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.popen is None or self.popen.poll() is None


@dataclass
class WebhookDelivery:
    job_id: str
    url: str
    status: str
    attempts: list[int | str] = field(default_factory=list)
    dropped: bool = False
    body: dict[str, Any] = field(default_factory=dict)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _process_tree(pid: int) -> list[int]:
    """pid and all its descendants (deepest first), whatever session they moved to."""
    try:
        import psutil  # a dependency of the runpod SDK, which the workers need anyway
    except ImportError:
        return [pid]
    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.Error:
        return [pid]
    return [c.pid for c in reversed(children)] + [pid]


def _kill_tree(pid: int) -> None:
    for target in _process_tree(pid):
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass


class RunPodEmulator:
    def __init__(
        self,
        workers: int = 1,
        endpoint_id: str = "local-cpu",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        handler_path: str | Path | None = None,
        python: str | None = None,
        worker_env: dict[str, str] | None = None,
        scratch_dir: str | Path | None = None,
        webhook_attempts: int = 3,
        webhook_retry_delay: float = 10.0,
        webhook_timeout: float = 10.0,
        result_retention_seconds: float = 1800.0,
        default_execution_timeout_ms: int = 600_000,
        default_ttl_ms: int = 86_400_000,
        min_execution_timeout_ms: int = MIN_EXECUTION_TIMEOUT_MS,
        min_ttl_ms: int = MIN_TTL_MS,
        long_poll_seconds: float = 2.0,
        timeout_kill_grace_seconds: float = 10.0,
        restart_workers: bool = True,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the RunPod emulator binds to loopback only, not {host!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", endpoint_id):
            raise ValueError("endpoint_id must be 1-64 letters, digits, '-' or '_'")
        self.workers_wanted = workers
        self.endpoint_id = endpoint_id
        self.host, self.port = host, port
        self.api_key = api_key
        self.handler_path = Path(handler_path or os.environ.get("LORAFORGE_HANDLER_PATH") or DEFAULT_HANDLER)
        self.python = python or sys.executable
        self.worker_env = dict(worker_env or {})
        self._own_scratch = scratch_dir is None
        self.scratch = Path(scratch_dir or tempfile.mkdtemp(prefix="loraforge-runpod-"))
        self.webhook_attempts = webhook_attempts
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_timeout = webhook_timeout
        self.result_retention_seconds = result_retention_seconds
        self.default_execution_timeout_ms = default_execution_timeout_ms
        self.default_ttl_ms = default_ttl_ms
        self.min_execution_timeout_ms = min_execution_timeout_ms
        self.min_ttl_ms = min_ttl_ms
        self.long_poll_seconds = long_poll_seconds
        self.timeout_kill_grace_seconds = timeout_kill_grace_seconds
        self.restart_workers = restart_workers

        self.jobs: dict[str, EmulatedJob] = {}
        self.queue: deque[str] = deque()
        self.workers: dict[str, WorkerProcess] = {}
        self.webhooks: list[WebhookDelivery] = []
        self.counters = {"completed": 0, "failed": 0, "cancelled": 0, "timed_out": 0, "retried": 0}
        self.worker_deaths: list[tuple[str, int | None]] = []
        self._run_failures: deque[int] = deque()
        self._drop_webhooks = 0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._worker_seq = 0

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Server root, e.g. http://127.0.0.1:8765."""
        assert self._server is not None, "start() the emulator first"
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        """Drop-in for RUNPOD_BASE_URL (RunPod's https://api.runpod.ai/v2)."""
        return self.url + "/v2"

    @property
    def endpoint_url(self) -> str:
        return f"{self.base_url}/{self.endpoint_id}"

    def start(self) -> RunPodEmulator:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._server = _Server((self.host, self.port), _make_handler(self))
        self._spawn_thread(self._server.serve_forever, "runpod-emulator-http")
        self._spawn_thread(self._monitor, "runpod-emulator-monitor")
        with self._lock:
            for _ in range(self.workers_wanted):
                self._start_worker()
        return self

    def _spawn_thread(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Kill every worker process tree (engines included), stop the server; nothing is left running."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
            workers = list(self.workers.values())
        spawned = [w.popen for w in workers if w.popen is not None]
        for popen in spawned:
            _kill_tree(popen.pid)
        for popen in spawned:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> RunPodEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Block until every worker has polled for a job once (imports done, SDK loop running)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                alive = [w for w in self.workers.values() if w.popen is not None and w.alive]
                if len(alive) >= self.workers_wanted and all(w.last_poll is not None for w in alive):
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"RunPod emulator workers not ready after {timeout} s; logs in {self.scratch}")
                self._changed.wait(min(remaining, 0.5))

    # -- workers ----------------------------------------------------------------------------------
    def _start_worker(self) -> WorkerProcess:
        self._worker_seq += 1
        worker_id = f"{self.endpoint_id}-w{self._worker_seq}"
        folder = self.scratch / worker_id
        folder.mkdir(parents=True, exist_ok=True)
        root = self.url
        env = dict(os.environ)
        for name in ("RUNPOD_AI_API_KEY", "RUNPOD_WEBHOOK_PING", "RUNPOD_REALTIME_PORT"):
            env.pop(name, None)  # no heartbeat process: a killed worker must leave nothing behind
        env.update({"LORAFORGE_WORK_DIR": str(folder / "jobs"), "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
        env.update(self.worker_env)
        env.update({
            "RUNPOD_WEBHOOK_GET_JOB": f"{root}/v2/{self.endpoint_id}/job-take/$ID?gpu=emulated",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{root}/v2/{self.endpoint_id}/job-done/$RUNPOD_POD_ID/$ID?gpu=emulated",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{root}/v2/{self.endpoint_id}/job-stream/$RUNPOD_POD_ID/$ID?gpu=emulated",
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
            "PYTHONUNBUFFERED": "1",
        })
        log_path = folder / "worker.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen([self.python, "-u", str(self.handler_path)], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                     stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        worker = WorkerProcess(id=worker_id, popen=popen, log_path=log_path)
        self.workers[worker_id] = worker
        return worker

    def worker_log(self, worker_id: str) -> str:
        path = self.scratch / worker_id / "worker.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_worker(self, job_id: str | None = None, worker_id: str | None = None) -> str:
        """SIGKILL a worker's whole process tree (a container dying). Returns the worker id killed."""
        with self._lock:
            if worker_id is None:
                job = self.jobs.get(job_id or "")
                if job is None or job.worker_id is None:
                    raise KeyError(f"no worker holds job {job_id!r}")
                worker_id = job.worker_id
            worker = self.workers[worker_id]
        if worker.popen is None:
            raise KeyError(f"worker {worker_id} is external: the emulator did not start it and cannot kill it")
        _kill_tree(worker.popen.pid)
        return worker_id

    # -- faults -----------------------------------------------------------------------------------
    def fault(self, *, fail_run: int = 0, fail_run_status: int = 429, drop_webhooks: int = 0, kill_worker_for_job: str | None = None) -> None:
        """Inject failures: the next `fail_run` /run calls answer `fail_run_status`; the next
        `drop_webhooks` completion webhooks are never sent; the worker running `kill_worker_for_job` is killed."""
        if fail_run and not (fail_run_status == 429 or 500 <= fail_run_status <= 599):
            raise ValueError("fail_run_status must be 429 or 5xx")
        with self._lock:
            self._run_failures.extend([fail_run_status] * fail_run)
            self._drop_webhooks += drop_webhooks
        if kill_worker_for_job:
            self.kill_worker(job_id=kill_worker_for_job)

    # -- inspection -------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return None if job is None else job.public(time.monotonic()) | {"worker_id": job.worker_id}

    def wait_for_status(self, job_id: str, statuses: set[str] | frozenset[str] = TERMINAL, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                job = self.jobs.get(job_id)
                if job is not None and job.status in statuses:
                    return job.public(time.monotonic()) | {"worker_id": job.worker_id}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"job {job_id} is {job.status if job else 'unknown'} after {timeout} s")
                self._changed.wait(min(remaining, 0.5))

    # -- state transitions (called with the lock held) ---------------------------------------------
    def _finish(self, job: EmulatedJob, status: str, *, output: Any = None, error: Any = None) -> None:
        now = time.monotonic()
        job.status, job.finished = status, now
        if output is not None:
            job.output = output
        if error is not None:
            job.error = error
        self.counters[{"COMPLETED": "completed", "FAILED": "failed", "CANCELLED": "cancelled", "TIMED_OUT": "timed_out"}[status]] += 1
        if job.webhook:
            body = {"delayTime": job.delay_ms(now), "executionTime": job.execution_ms(now), "id": job.id, "input": job.input,
                    "output": job.output, "status": status, "webhook": job.webhook}
            if status == "FAILED":
                body["error"] = job.error
            delivery = WebhookDelivery(job_id=job.id, url=job.webhook, status=status, body=body)
            self.webhooks.append(delivery)
            if self._drop_webhooks > 0:
                self._drop_webhooks -= 1
                delivery.dropped = True
            else:
                threading.Thread(target=self._deliver_webhook, args=(delivery,), daemon=True).start()
        self._changed.notify_all()

    def _stop_signal(self, job: EmulatedJob) -> None:
        worker = self.workers.get(job.worker_id or "")
        if worker is not None:
            worker.stop_requests.append(job.id)
            self._changed.notify_all()

    def _deliver_webhook(self, delivery: WebhookDelivery) -> None:
        data = json.dumps(delivery.body).encode()
        for attempt in range(self.webhook_attempts):
            if self._stopping.is_set():
                return
            request = urllib.request.Request(delivery.url, data=data, method="POST", headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.webhook_timeout) as resp:  # noqa: S310 - URL given by the test/local stack
                    code: int | str = resp.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except (urllib.error.URLError, OSError) as exc:
                code = f"{type(exc).__name__}: {exc}"
            delivery.attempts.append(code)
            if code == 200:
                return
            if attempt < self.webhook_attempts - 1:
                self._stopping.wait(self.webhook_retry_delay)

    # -- the monitor: timeouts, ttl, retention, dead workers ----------------------------------------
    def _monitor(self) -> None:
        while not self._stopping.wait(0.2):
            with self._changed:
                now = time.monotonic()
                for job in list(self.jobs.values()):
                    if job.status == "IN_QUEUE" and now - job.created > job.ttl_ms / 1000:
                        self._remove_from_queue(job.id)
                        self._finish(job, "TIMED_OUT")
                    elif job.status == "IN_PROGRESS" and (
                        now - (job.started or now) > job.execution_timeout_ms / 1000 or now - job.created > job.ttl_ms / 1000
                    ):
                        self._finish(job, "TIMED_OUT")
                        self._stop_signal(job)
                        worker = self.workers.get(job.worker_id or "")
                        if worker is not None and worker.popen is not None:
                            worker.kill_at = now + self.timeout_kill_grace_seconds  # RunPod: a timeout also stops the worker
                    elif job.status in TERMINAL and job.finished is not None and now - job.finished > self.result_retention_seconds:
                        del self.jobs[job.id]
                for worker in list(self.workers.values()):
                    if worker.popen is None:
                        continue
                    if worker.kill_at is not None and now >= worker.kill_at and worker.alive:
                        worker.kill_at = None
                        _kill_tree(worker.popen.pid)
                    code = worker.popen.poll()
                    if code is None or self._stopping.is_set():
                        continue
                    self._on_worker_exit(worker, code)

    def _on_worker_exit(self, worker: WorkerProcess, code: int) -> None:
        del self.workers[worker.id]
        self.worker_deaths.append((worker.id, code))
        for job in self.jobs.values():
            if job.worker_id == worker.id and job.status == "IN_PROGRESS":
                self._finish(job, "FAILED", error=f"worker {worker.id} exited with code {code} while running the job")
        if self.restart_workers:
            self._start_worker()
        self._changed.notify_all()

    def _remove_from_queue(self, job_id: str) -> None:
        try:
            self.queue.remove(job_id)
        except ValueError:
            pass

    # -- request handling (called from HTTP threads) ------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if not self.api_key:
            return True
        if not header:
            return False
        return header.strip() in (self.api_key, f"Bearer {self.api_key}")

    def submit(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return 400, {"error": "the body must be a JSON object with an 'input' object"}
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            return 400, {"error": "policy must be an object"}
        execution = policy.get("executionTimeout", self.default_execution_timeout_ms)
        ttl = policy.get("ttl", self.default_ttl_ms)
        if not isinstance(execution, int) or not self.min_execution_timeout_ms <= execution <= MAX_EXECUTION_TIMEOUT_MS:
            return 400, {"error": f"policy.executionTimeout must be {self.min_execution_timeout_ms}-{MAX_EXECUTION_TIMEOUT_MS} ms"}
        if not isinstance(ttl, int) or not self.min_ttl_ms <= ttl <= MAX_TTL_MS:
            return 400, {"error": f"policy.ttl must be {self.min_ttl_ms}-{MAX_TTL_MS} ms"}
        webhook = body.get("webhook")
        if webhook is not None and (not isinstance(webhook, str) or urlsplit(webhook).scheme not in ("http", "https")):
            return 400, {"error": "webhook must be an http(s) URL"}
        with self._changed:
            if self._run_failures:
                status = self._run_failures.popleft()
                return status, {"error": "emulated failure" if status != 429 else "rate limit exceeded"}
            job = EmulatedJob(id=f"{uuid.uuid4()}-u1", input=body["input"], webhook=webhook, execution_timeout_ms=execution, ttl_ms=ttl)
            self.jobs[job.id] = job
            self.queue.append(job.id)
            self._changed.notify_all()
        return 200, {"id": job.id, "status": "IN_QUEUE"}

    def status(self, job_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return 404, {"error": "request does not exist"}
            return 200, job.public(time.monotonic())

    def cancel(self, job_id: str) -> tuple[int, dict[str, Any]]:
        with self._changed:
            job = self.jobs.get(job_id)
            if job is None:
                return 404, {"error": "request does not exist"}
            if job.status == "IN_QUEUE":
                self._remove_from_queue(job.id)
                self._finish(job, "CANCELLED")
            elif job.status == "IN_PROGRESS":
                self._finish(job, "CANCELLED")
                self._stop_signal(job)
            return 200, {"id": job.id, "status": job.status}

    def retry(self, job_id: str) -> tuple[int, dict[str, Any]]:
        with self._changed:
            job = self.jobs.get(job_id)
            if job is None:
                return 404, {"error": "request does not exist"}
            if job.status not in ("FAILED", "TIMED_OUT"):
                return 400, {"error": f"only FAILED or TIMED_OUT jobs can be retried, this one is {job.status}"}
            job.status, job.started, job.finished, job.worker_id = "IN_QUEUE", None, None, None
            job.output = job.error = job.progress = None
            job.created = time.monotonic()
            job.retried += 1
            self.counters["retried"] += 1
            self.queue.append(job.id)
            self._changed.notify_all()
            return 200, {"id": job.id, "status": "IN_QUEUE"}

    def purge(self) -> tuple[int, dict[str, Any]]:
        with self._changed:
            removed = list(self.queue)
            self.queue.clear()
            for job_id in removed:
                self.jobs.pop(job_id, None)
            return 200, {"removed": len(removed), "status": "completed"}

    def health(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            running_workers = {j.worker_id for j in self.jobs.values() if j.status == "IN_PROGRESS"}
            alive = [w for w in self.workers.values() if w.alive]
            return 200, {
                "jobs": {"completed": self.counters["completed"], "failed": self.counters["failed"] + self.counters["timed_out"],
                         "inProgress": sum(1 for j in self.jobs.values() if j.status == "IN_PROGRESS"),
                         "inQueue": len(self.queue), "retried": self.counters["retried"]},
                "workers": {"idle": sum(1 for w in alive if w.id not in running_workers),
                            "running": sum(1 for w in alive if w.id in running_workers)},
            }

    def take(self, worker_id: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.long_poll_seconds
        with self._changed:
            worker = self.workers.get(worker_id)
            if worker is None:  # a worker started outside the emulator (e.g. `python handler.py` by hand)
                worker = self.workers[worker_id] = WorkerProcess(id=worker_id, popen=None, log_path=None)
            if worker.last_poll is None:
                worker.last_poll = time.monotonic()
                self._changed.notify_all()
            while not self._stopping.is_set():
                worker.last_poll = time.monotonic()
                # A worker being stopped for a timeout gets no new job: its stop would kill that job too.
                if self.queue and worker.alive and worker.kill_at is None:
                    job = self.jobs[self.queue.popleft()]
                    job.status, job.started, job.worker_id = "IN_PROGRESS", time.monotonic(), worker_id
                    self._changed.notify_all()
                    return {"id": job.id, "input": job.input}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return None

    def stop_signals(self, worker_id: str) -> list[str]:
        deadline = time.monotonic() + self.long_poll_seconds
        with self._changed:
            while not self._stopping.is_set():
                worker = self.workers.get(worker_id)
                if worker is not None and worker.stop_requests:
                    ids = list(worker.stop_requests)
                    worker.stop_requests.clear()
                    return ids
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._changed.wait(remaining)
            return []

    def done(self, worker_id: str, job_id: str, body: Any, is_stream: bool) -> None:
        if not isinstance(body, dict):
            return
        with self._changed:
            job = self.jobs.get(job_id)
            if job is None or job.worker_id != worker_id or job.status != "IN_PROGRESS":
                return  # late progress after the end, a cancelled/timed-out job's leftovers, or another worker's job
            if is_stream:
                job.stream.append(body.get("output"))
            elif body.get("status") == "IN_PROGRESS":
                job.progress = body.get("output")
            elif body.get("error") is not None:
                self._finish(job, "FAILED", output=body.get("output"), error=body["error"])
            else:
                self._finish(job, "COMPLETED", output=body.get("output"))
            self._changed.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Workers are killed mid-request on purpose (faults, stop()); a reset connection is not an error here.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def _make_handler(emulator: RunPodEmulator) -> type[BaseHTTPRequestHandler]:
    prefix = f"/v2/{emulator.endpoint_id}/"

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "RunPodEmulator/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass

        def _reply(self, status: int, body: Any = None) -> None:
            if status == 204:
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            data = json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self, limit: int) -> tuple[Any, str | None]:
            length = int(self.headers.get("content-length") or 0)
            if length > limit:
                self.rfile.read(length)
                return None, f"body larger than {limit} bytes"
            raw = self.rfile.read(length) if length else b""
            try:
                return (json.loads(raw) if raw else None), None
            except ValueError:
                return None, "body is not JSON"

        def _route(self, method: str) -> None:
            path = urlsplit(self.path).path
            query = urlsplit(self.path).query
            if path == "/_emulator/fault" and method == "POST":
                body, problem = self._body(64 * 1024)
                if problem or not isinstance(body, dict):
                    return self._reply(400, {"error": problem or "expected an object"})
                try:
                    emulator.fault(**body)
                except (TypeError, ValueError, KeyError) as exc:
                    return self._reply(400, {"error": str(exc)})
                return self._reply(200, {"ok": True})
            if path == "/_emulator/state" and method == "GET":
                with emulator._lock:
                    return self._reply(200, {"workers": list(emulator.workers), "jobs": len(emulator.jobs), "queue": len(emulator.queue)})
            if not path.startswith(prefix):
                return self._reply(404, {"error": "unknown endpoint"})
            parts = path[len(prefix):].split("/")
            op = parts[0]
            if op in ("job-take", "job-stop", "job-done", "job-stream"):
                return self._worker_route(method, op, parts[1:], query)
            if not emulator.authorized(self.headers.get("authorization")):
                return self._reply(401, {"error": "unauthorized"})
            if method == "POST" and op == "run" and len(parts) == 1:
                body, problem = self._body(MAX_RUN_BODY)
                if problem:
                    return self._reply(413 if "larger" in problem else 400, {"error": problem})
                return self._reply(*emulator.submit(body))
            if method == "GET" and op == "status" and len(parts) == 2:
                return self._reply(*emulator.status(parts[1]))
            if method == "POST" and op == "cancel" and len(parts) == 2:
                return self._reply(*emulator.cancel(parts[1]))
            if method == "POST" and op == "retry" and len(parts) == 2:
                return self._reply(*emulator.retry(parts[1]))
            if method == "POST" and op == "purge-queue" and len(parts) == 1:
                return self._reply(*emulator.purge())
            if method == "GET" and op == "health" and len(parts) == 1:
                return self._reply(*emulator.health())
            return self._reply(404, {"error": f"{method} {path} is not an endpoint operation"})

        def _worker_route(self, method: str, op: str, parts: list[str], query: str) -> None:
            if op == "job-take" and method == "GET" and len(parts) == 1:
                job = emulator.take(parts[0])
                return self._reply(200, job) if job else self._reply(204)
            if op == "job-stop" and method == "GET" and len(parts) == 1:
                ids = emulator.stop_signals(parts[0])
                return self._reply(200, {"jobsToStop": ids}) if ids else self._reply(204)
            if op in ("job-done", "job-stream") and method == "POST" and len(parts) == 2:
                body, problem = self._body(MAX_DONE_BODY)
                if problem:
                    return self._reply(400, {"error": problem})
                emulator.done(parts[0], parts[1], body, is_stream=op == "job-stream" or "isStream=true" in query)
                return self._reply(200, {})
            return self._reply(404, {"error": "unknown worker operation"})

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraforge.local.runpod_emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--endpoint-id", default="local-cpu")
    parser.add_argument("--api-key", default=os.environ.get("LORAFORGE_LOCAL_RUNPOD_API_KEY"))
    parser.add_argument("--webhook-retry-delay", type=float, default=10.0)
    args = parser.parse_args(argv)
    emulator = RunPodEmulator(workers=args.workers, endpoint_id=args.endpoint_id, host=args.host, port=args.port,
                              api_key=args.api_key, webhook_retry_delay=args.webhook_retry_delay)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    emulator.start()
    print(f"RunPod emulator on {emulator.base_url} (endpoint {emulator.endpoint_id}, {args.workers} workers); Ctrl-C to stop", flush=True)
    try:
        done.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
