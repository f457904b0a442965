"""Signed worker events to the callback URL (DESIGN §7).

- Every event names the RunPod job it comes from (`runpod_job_id`), so the API can tell a refused duplicate
  run's events from the real run's.
- Standard Webhooks signature with the per-job secret (`loraforge.signing`), a stable message id
  per event (`<job>.<attempt>.<seq>`) so a retried POST is recognisable as the same event.
- `seq` starts at 1 and grows by one per event of this attempt; one sender task delivers events in
  order, so the API sees them in sequence (a dropped event leaves a gap, never a reordering).
- Progress is throttled to one event per `min_interval_seconds`; the metric points of the steps
  in between ride along in `metrics`. Each progress event is also mirrored to RunPod
  (`progress_update`), where `/status` shows it while the job runs.
- Best effort: each POST is retried briefly (once the callback failed, one try per event until it answers
  again); a callback that is down never blocks training (the
  RunPod webhook and the reconciler are the backstop). Only the `started` event is awaited: its
  409 answer means this RunPod job is a duplicate run and must stop before training.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from loraforge.contract import Callback, WorkerEvent, WorkerEventType
from loraforge.models.common import utcnow
from loraforge.signing import signed_headers

log = logging.getLogger("loraforge_worker.events")

TIMEOUT = httpx.Timeout(connect=3.0, read=10.0, write=10.0, pool=3.0)
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MIRROR_INTERVAL_SECONDS = 1.0
"""RunPod's `progress_update` opens a thread and an HTTP session per call: at most one a second."""
END_TYPES = frozenset({WorkerEventType.COMPLETED, WorkerEventType.FAILED, WorkerEventType.CANCELLED})
"""A progress flushed by one of these is not mirrored: the handler returns right after, and a `progress_update` landing
after the final result can leave RunPod's /status IN_PROGRESS (runpod-python#250)."""

Mirror = Callable[[dict[str, Any]], None]


class EventSender:
    def __init__(self, job_id: str, attempt: int, callback: Callback | None, *, runpod_job_id: str | None = None, mirror: Mirror | None = None,
                 attempts: int = 3, retry_delay: float = 0.5, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic, mirror_interval: float = MIRROR_INTERVAL_SECONDS) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.runpod_job_id = runpod_job_id
        self.callback = callback
        self.mirror = mirror
        self.mirror_interval = mirror_interval
        self._last_mirror_at: float | None = None
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.interval = callback.min_interval_seconds if callback else 0.0
        self._clock = clock
        self._client = httpx.AsyncClient(timeout=TIMEOUT, transport=transport) if callback else None
        self._queue: asyncio.Queue[WorkerEvent | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._last_progress_at: float | None = None
        self._pending_progress: dict[str, Any] | None = None
        self._metrics: list[dict[str, Any]] = []
        self.delivered: list[int] = []
        self.failed: list[int] = []
        self._failing = False

    # -- building events -------------------------------------------------------------------------
    def _next(self, event_type: WorkerEventType, data: dict[str, Any]) -> WorkerEvent:
        self._seq += 1
        return WorkerEvent(job_id=self.job_id, attempt=self.attempt, runpod_job_id=self.runpod_job_id, seq=self._seq, type=event_type,
                           at=utcnow(), data=data)

    async def send_started(self, data: dict[str, Any]) -> int | None:
        """Deliver the first event now and return the final HTTP status (None: no callback / unreachable)."""
        return await self._deliver(self._next(WorkerEventType.STARTED, data))

    def emit(self, event_type: WorkerEventType, data: dict[str, Any]) -> None:
        """Queue a non-progress event (a pending throttled progress goes first, to keep the order)."""
        self._flush_progress(mirror=event_type not in END_TYPES)
        self._enqueue(self._next(event_type, data))

    def progress(self, step: int, total_steps: int, loss: float | None, lr: float | None, eta_seconds: float | None) -> None:
        self._metrics.append({"step": step, "loss": loss, "lr": lr})
        self._pending_progress = {"step": step, "total_steps": total_steps, "loss": loss, "lr": lr, "eta_seconds": eta_seconds}
        now = self._clock()
        if self._last_progress_at is None or now - self._last_progress_at >= self.interval:
            self._flush_progress()
        elif self._timer is None:
            delay = self.interval - (now - self._last_progress_at)
            self._timer = asyncio.get_running_loop().call_later(delay, self._flush_progress)

    def _flush_progress(self, mirror: bool = True) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending_progress is None:
            return
        data = self._pending_progress | {"metrics": self._metrics}
        self._pending_progress, self._metrics = None, []
        self._last_progress_at = self._clock()
        event = self._next(WorkerEventType.PROGRESS, data)
        now = self._clock()
        if mirror and self.mirror is not None and (self._last_mirror_at is None or now - self._last_mirror_at >= self.mirror_interval):
            self._last_mirror_at = now
            try:
                self.mirror({"seq": event.seq, "type": "progress", **{k: v for k, v in data.items() if k != "metrics"}})
            except Exception:  # noqa: BLE001 - the mirror is a convenience; never let it break training
                log.exception("progress mirror failed")
        self._enqueue(event)

    # -- delivery -------------------------------------------------------------------------------
    def _enqueue(self, event: WorkerEvent) -> None:
        if self._client is None:
            return
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())
        self._queue.put_nowait(event)

    async def _run(self) -> None:
        while (event := await self._queue.get()) is not None:
            await self._deliver(event)

    async def _deliver(self, event: WorkerEvent) -> int | None:
        if self._client is None or self.callback is None:
            return None
        body = event.model_dump_json().encode()
        msg_id = f"{event.job_id}.{event.attempt}.{event.seq}"
        status: int | None = None
        # While the callback is failing, later events get one try each: a dead API must not pile up retries.
        attempts = 1 if self._failing else self.attempts
        for attempt in range(attempts):
            try:
                resp = await self._client.post(self.callback.url, content=body, headers=signed_headers(self.callback.secret, msg_id, body))
                status = resp.status_code
                if status < 300:
                    self.delivered.append(event.seq)
                    self._failing = False
                    return status
                if status not in RETRY_STATUS:
                    break
            except httpx.HTTPError as exc:
                log.warning("event %s delivery failed: %s", msg_id, exc)
                status = None
            if attempt < attempts - 1:
                await asyncio.sleep(self.retry_delay * 2**attempt)
        self.failed.append(event.seq)
        self._failing = status is None or status >= 500
        return status

    async def close(self, timeout: float = 15.0) -> None:
        """Deliver what is queued (bounded by `timeout`), then stop."""
        self._flush_progress(mirror=False)
        if self._worker is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except TimeoutError:
                self._worker.cancel()
        if self._client is not None:
            await self._client.aclose()
