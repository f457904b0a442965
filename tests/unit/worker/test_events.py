"""Signed, ordered, throttled worker events (Standard Webhooks, verified with the reference library)."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
from standardwebhooks.webhooks import Webhook

from loraforge.contract import Callback, WorkerEvent, WorkerEventType
from loraforge_worker.events import EventSender

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


class Recorder:
    def __init__(self, statuses: dict[str, int] | None = None, fail_with: Exception | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.statuses = statuses or {}
        self.fail_with = fail_with

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        event_type = json.loads(request.content)["type"]
        return httpx.Response(self.statuses.get(event_type, 204))

    def events(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sender(recorder: Recorder, *, interval: float = 0.0, clock: FakeClock | None = None, mirror=None) -> EventSender:
    callback = Callback(url="https://api.example.com/v1/hooks/worker/job_1", secret=SECRET, min_interval_seconds=interval)
    return EventSender("job_1", 2, callback, runpod_job_id="rp-1-u1", mirror=mirror, transport=httpx.MockTransport(recorder),
                       retry_delay=0.0, clock=clock or FakeClock(), mirror_interval=3.5)


def test_events_are_signed_numbered_and_delivered_in_order():
    recorder = Recorder()

    async def scenario() -> None:
        events = sender(recorder)
        assert await events.send_started({"runpod_job_id": "rp-1", "dispatch_token": "tok", "worker_id": "w"}) == 204
        events.progress(1, 10, 1.5, 1e-4, 9.0)
        events.emit(WorkerEventType.CHECKPOINT, {"kind": "checkpoint", "step": 1})
        events.progress(2, 10, 1.4, 1e-4, 8.0)
        events.emit(WorkerEventType.COMPLETED, {"status": "completed"})
        await events.close()

    asyncio.run(scenario())

    # Then every request verifies with the reference Standard Webhooks library and carries a stable message id
    for request in recorder.requests:
        Webhook(SECRET).verify(request.content, dict(request.headers))
    bodies = recorder.events()
    assert [b["seq"] for b in bodies] == [1, 2, 3, 4, 5]
    assert [b["type"] for b in bodies] == ["started", "progress", "checkpoint", "progress", "completed"]
    assert [r.headers["webhook-id"] for r in recorder.requests] == [f"job_1.2.{n}" for n in range(1, 6)]
    assert all(WorkerEvent.model_validate(b).job_id == "job_1" and b["attempt"] == 2 for b in bodies)
    # and every event names the RunPod run it comes from, so the API can tell a refused duplicate run's events apart
    assert {b["runpod_job_id"] for b in bodies} == {"rp-1-u1"}


def test_progress_is_throttled_and_the_steps_in_between_ride_along_as_metrics():
    recorder, clock, mirrored = Recorder(), FakeClock(), []

    async def scenario() -> None:
        events = sender(recorder, interval=3.0, clock=clock, mirror=mirrored.append)
        for step in range(1, 7):  # one step a second
            events.progress(step, 100, 2.0 - step / 10, 1e-4, None)
            clock.now += 1.0
        events.emit(WorkerEventType.CHECKPOINT, {"step": 6})
        await events.close()

    asyncio.run(scenario())

    bodies = recorder.events()
    progress = [b["data"] for b in bodies if b["type"] == "progress"]
    # step 1 goes at once, steps 2-3 wait for the interval (step 4), 5-6 are flushed before the checkpoint
    assert [p["step"] for p in progress] == [1, 4, 6]
    assert [[m["step"] for m in p["metrics"]] for p in progress] == [[1], [2, 3, 4], [5, 6]]
    assert bodies[-1]["type"] == "checkpoint"
    # progress is mirrored to RunPod (progress_update) at most once per mirror interval, without the metric list
    assert [m["step"] for m in mirrored] == [1, 6] and "metrics" not in mirrored[0]


def test_the_started_event_reports_a_409_so_a_duplicate_run_can_stop():
    recorder = Recorder(statuses={"started": 409})

    async def scenario() -> int | None:
        events = sender(recorder)
        status = await events.send_started({"runpod_job_id": "rp", "dispatch_token": "t"})
        await events.close()
        return status

    assert asyncio.run(scenario()) == 409
    assert len(recorder.requests) == 1  # a 4xx is an answer, not retried


def test_a_callback_that_is_down_never_blocks_and_is_not_retried_forever():
    recorder = Recorder(fail_with=httpx.ConnectError("refused"))

    async def scenario() -> EventSender:
        events = sender(recorder)
        assert await events.send_started({"runpod_job_id": "rp", "dispatch_token": "t"}) is None
        for step in range(1, 4):
            events.progress(step, 3, 1.0, 1e-4, None)  # returns at once: queued, never awaited
        events.emit(WorkerEventType.COMPLETED, {})
        await events.close(timeout=5)
        return events

    events = asyncio.run(scenario())

    # The started event got its 3 tries; once the callback was known down, later events got one each
    assert events.delivered == [] and events.failed[0] == 1
    assert len(recorder.requests) == 3 + (len(events.failed) - 1)


def test_5xx_answers_are_retried_then_delivered():
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(503 if calls["n"] < 3 else 200)

    async def scenario() -> EventSender:
        callback = Callback(url="https://api.example.com/hook", secret=SECRET, min_interval_seconds=0)
        events = EventSender("job_1", 1, callback, transport=httpx.MockTransport(flaky), retry_delay=0.0)
        events.emit(WorkerEventType.LOG, {"lines": ["x"]})
        await events.close()
        return events

    events = asyncio.run(scenario())
    assert events.delivered == [1] and calls["n"] == 3


def test_without_a_callback_nothing_is_sent():
    async def scenario() -> None:
        events = EventSender("job_1", 1, None)
        assert await events.send_started({}) is None
        events.progress(1, 2, 1.0, None, None)
        events.emit(WorkerEventType.COMPLETED, {})
        await events.close()

    asyncio.run(scenario())


def test_no_progress_update_is_mirrored_to_runpod_as_the_run_ends():
    # RunPod's progress_update is a fire-and-forget thread; one posted just before the handler returns can land after
    # the final result and leave /status IN_PROGRESS (runpod-python#250, reference/runpod.md §1).
    recorder, clock, mirrored = Recorder(), FakeClock(), []

    async def scenario() -> None:
        # Given a run whose last progress is still held back by the event throttle when the engine fails
        events = sender(recorder, interval=5.0, clock=clock, mirror=mirrored.append)
        events.progress(1, 100, 1.0, 1e-4, None)
        clock.now += 4.0
        events.progress(2, 100, 0.9, 1e-4, None)
        clock.now += 0.5
        # When the handler reports its end (and returns right after)
        events.emit(WorkerEventType.FAILED, {"status": "failed"})
        await events.close()

    asyncio.run(scenario())

    # Then the held-back progress still reaches the callback, in order, before the failure
    bodies = recorder.events()
    assert [(b["type"], b["data"].get("step")) for b in bodies] == [("progress", 1), ("progress", 2), ("failed", None)]
    # but nothing is mirrored to RunPod at the end: the only progress_update is the one sent while training ran
    assert [m["step"] for m in mirrored] == [1]
