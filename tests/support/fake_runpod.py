"""A fake of RunPod's public serverless endpoint API on 127.0.0.1, for tests (reference/runpod.md §3).

Cloud semantics, not the SDK's `--rp_serve_api` stub: `POST /{endpoint}/run` stores a job
IN_QUEUE and answers `{id, status}`; `GET /{endpoint}/status/{id}` answers
`{id, status, delayTime, executionTime, output?, error?}`; `POST /{endpoint}/cancel/{id}` cancels;
`GET /{endpoint}/health`; the `authorization` header must be `Bearer <api_key>` (401 otherwise).
Tests drive the job's life (`start`, `complete`, `fail`, `time_out`, `forget` = past retention) and
get the webhook body the cloud would POST (`webhook_body`, with `input` echoed).

Faults are scripted per operation, consumed in order before normal behaviour resumes:
`Reply(429, retry_after="0")`, `Reply(500)`, `Reply(hang=True)` (no answer until the client times
out; nothing is created) and `Reply(accept_then_hang=True)` (the job IS created, then no answer).
Every request is recorded in `calls`.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
_ROUTE = re.compile(r"^/(?P<endpoint>[^/]+)/(?P<op>run|status|cancel|health)(?:/(?P<job>[^/?]+))?/?$")


@dataclass
class Reply:
    """One scripted answer: an HTTP status (with optional body / Retry-After) or a hang."""

    status: int = 200
    body: Any = None
    retry_after: str | None = None
    hang: bool = False
    accept_then_hang: bool = False


@dataclass
class Call:
    method: str
    op: str
    endpoint: str
    path: str
    body: Any
    authorization: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeJob:
    id: str
    endpoint: str
    input: dict[str, Any]
    webhook: str | None
    policy: dict[str, Any]
    status: str = "IN_QUEUE"
    output: Any = None
    error: Any = None
    delay_ms: int | None = None
    execution_ms: int | None = None
    forgotten: bool = False

    def view(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.delay_ms is not None:
            body["delayTime"] = self.delay_ms
        if self.execution_ms is not None:
            body["executionTime"] = self.execution_ms
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        return body


class FakeRunPod:
    def __init__(self, api_key: str = "local-runpod-key", hang_seconds: float = 2.0) -> None:
        self.api_key = api_key
        self.hang_seconds = hang_seconds
        self.calls: list[Call] = []
        self.jobs: dict[str, FakeJob] = {}
        self._scripts: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeRunPod:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-runpod", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.jobs.clear()
            self._scripts.clear()

    # -- scripting and inspection -------------------------------------------------------------------
    def script(self, op: str, *replies: Reply) -> None:
        """Queue answers for `op` (run, status, cancel, health); normal behaviour after they are used."""
        with self._lock:
            self._scripts.setdefault(op, deque()).extend(replies)

    def calls_to(self, op: str, runpod_job_id: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.op == op and (runpod_job_id is None or c.path.endswith(f"/{runpod_job_id}"))]

    def runs_for(self, job_id: str) -> list[FakeJob]:
        """RunPod jobs created for one loraforge job (found by the job id carried in the input)."""
        with self._lock:
            return [j for j in self.jobs.values() if j.input.get("job_id") == job_id]

    def only_run_for(self, job_id: str) -> FakeJob:
        runs = self.runs_for(job_id)
        assert len(runs) == 1, f"expected one RunPod job for {job_id}, got {len(runs)}"
        return runs[0]

    # -- driving a job's life -----------------------------------------------------------------------
    def start_job(self, runpod_job_id: str, delay_ms: int = 1500) -> None:
        with self._lock:
            job = self.jobs[runpod_job_id]
            job.status, job.delay_ms = "IN_PROGRESS", delay_ms

    def complete(self, runpod_job_id: str, output: Any, *, delay_ms: int = 1500, execution_ms: int = 60_000) -> None:
        self._finish(runpod_job_id, "COMPLETED", output=output, delay_ms=delay_ms, execution_ms=execution_ms)

    def fail(self, runpod_job_id: str, error: Any, *, output: Any = None, delay_ms: int = 1500, execution_ms: int = 30_000) -> None:
        self._finish(runpod_job_id, "FAILED", output=output, error=error, delay_ms=delay_ms, execution_ms=execution_ms)

    def time_out(self, runpod_job_id: str, *, delay_ms: int = 0, execution_ms: int = 0) -> None:
        self._finish(runpod_job_id, "TIMED_OUT", delay_ms=delay_ms, execution_ms=execution_ms)

    def forget(self, runpod_job_id: str) -> None:
        """Past RunPod's retention (30 min after the end, or after the ttl): /status answers 404."""
        with self._lock:
            self.jobs[runpod_job_id].forgotten = True

    def _finish(self, runpod_job_id: str, status: str, **values: Any) -> None:
        with self._lock:
            job = self.jobs[runpod_job_id]
            job.status = status
            job.output = values.get("output")
            job.error = values.get("error")
            job.delay_ms = values.get("delay_ms")
            job.execution_ms = values.get("execution_ms")

    def webhook_body(self, runpod_job_id: str, **overrides: Any) -> dict[str, Any]:
        """What the cloud POSTs to the webhook URL when a job ends: the /status view plus `input` and `webhook`."""
        with self._lock:
            job = self.jobs[runpod_job_id]
            body = {**job.view(), "input": job.input, "webhook": job.webhook}
        return {**body, **overrides}

    # -- HTTP -------------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, method: str) -> None:
        match = _ROUTE.match(req.path)
        length = int(req.headers.get("content-length") or 0)
        raw = req.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if not match:
            self._send(req, 404, {"error": "not found"})
            return
        op, endpoint, runpod_job_id = match["op"], match["endpoint"], match["job"]
        with self._lock:
            self.calls.append(Call(method, op, endpoint, req.path, body, req.headers.get("authorization")))
            scripted = self._scripts.get(op)
            reply = scripted.popleft() if scripted else None
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            self._send(req, 401, {"error": "Unauthorized"})
            return
        if reply is not None and reply.hang:
            time.sleep(self.hang_seconds)
            return
        if reply is not None and not reply.accept_then_hang:
            headers = {"retry-after": reply.retry_after} if reply.retry_after is not None else {}
            self._send(req, reply.status, reply.body if reply.body is not None else {"error": f"scripted {reply.status}"}, headers)
            return
        expected_method = {"run": "POST", "cancel": "POST", "status": "GET", "health": "GET"}[op]
        if method != expected_method or (op in ("status", "cancel")) != bool(runpod_job_id):
            self._send(req, 405 if method != expected_method else 404, {"error": "bad route"})
            return
        status, answer = getattr(self, f"_op_{op}")(endpoint, runpod_job_id, body)
        if reply is not None and reply.accept_then_hang:
            time.sleep(self.hang_seconds)
            return
        self._send(req, status, answer)

    def _op_run(self, endpoint: str, _: str | None, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return 400, {"error": "input must be an object"}
        job = FakeJob(id=f"{uuid.uuid4()}-u1", endpoint=endpoint, input=body["input"], webhook=body.get("webhook"),
                      policy=body.get("policy") or {})
        with self._lock:
            self.jobs[job.id] = job
        return 200, {"id": job.id, "status": job.status}

    def _op_status(self, endpoint: str, runpod_job_id: str | None, _: Any) -> tuple[int, Any]:
        with self._lock:
            job = self.jobs.get(runpod_job_id or "")
            if job is None or job.forgotten or job.endpoint != endpoint:
                return 404, {"error": "job not found"}
            return 200, job.view()

    def _op_cancel(self, endpoint: str, runpod_job_id: str | None, _: Any) -> tuple[int, Any]:
        with self._lock:
            job = self.jobs.get(runpod_job_id or "")
            if job is None or job.forgotten or job.endpoint != endpoint:
                return 404, {"error": "job not found"}
            if job.status not in TERMINAL:
                job.status = "CANCELLED"
            return 200, {"id": job.id, "status": job.status}

    def _op_health(self, endpoint: str, _: str | None, __: Any) -> tuple[int, Any]:
        with self._lock:
            mine = [j for j in self.jobs.values() if j.endpoint == endpoint]
        count = {s: sum(1 for j in mine if j.status == s) for s in ("COMPLETED", "FAILED", "IN_PROGRESS", "IN_QUEUE")}
        return 200, {"jobs": {"completed": count["COMPLETED"], "failed": count["FAILED"], "inProgress": count["IN_PROGRESS"],
                              "inQueue": count["IN_QUEUE"], "retried": 0}, "workers": {"idle": 0, "running": count["IN_PROGRESS"]}}

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        try:
            req.send_response(status)
            req.send_header("content-type", "application/json")
            req.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                req.send_header(name, value)
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a scripted hang)
