"""The RunPod client against the fake RunPod server: which failures are retried, and which never are."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from loraforge.providers.runpod import (
    RunPodAuthError,
    RunPodClient,
    RunPodError,
    RunPodJob,
    RunPodNotFound,
    RunPodOutcomeUnknown,
    RunPodUnavailable,
)
from tests.support.fake_runpod import FakeRunPod, Reply

KEY = "unit-test-key"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeRunPod]:
    fake = FakeRunPod(api_key=KEY, hang_seconds=0.6).start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server: FakeRunPod) -> FakeRunPod:
    server.reset()
    return server


def make_client(base_url: str, sleeps: list[float], *, retries: int = 3, api_key: str = KEY) -> RunPodClient:
    return RunPodClient(base_url, api_key, timeout=httpx.Timeout(0.3, connect=0.3), max_retries=retries, backoff_seconds=0.1,
                        sleep=sleeps.append)


def run(client: RunPodClient, job_id: str = "job_x") -> RunPodJob:
    return client.run("ep", {"job_id": job_id}, webhook="https://api.test/hook", execution_timeout_ms=60_000, ttl_ms=120_000)


def test_run_sends_input_webhook_and_policy_with_the_bearer_key(fake: FakeRunPod) -> None:
    sleeps: list[float] = []

    job = run(make_client(fake.base_url, sleeps))

    assert job.status == "IN_QUEUE"
    call = fake.calls_to("run")[0]
    assert call.authorization == f"Bearer {KEY}"
    assert call.body == {"input": {"job_id": "job_x"}, "webhook": "https://api.test/hook",
                         "policy": {"executionTimeout": 60_000, "ttl": 120_000}}
    assert sleeps == []


def test_run_is_retried_on_429_and_5xx_honouring_retry_after(fake: FakeRunPod) -> None:
    # Given RunPod answers 429 (Retry-After: 2), 500, 502, then accepts
    fake.script("run", Reply(429, retry_after="2"), Reply(500), Reply(502))
    sleeps: list[float] = []

    # When /run is called
    job = run(make_client(fake.base_url, sleeps))

    # Then it was sent 4 times, waited as told after the 429 and with bounded jittered backoff after the others
    assert len(fake.calls_to("run")) == 4 and len(fake.runs_for("job_x")) == 1 and job.id == fake.runs_for("job_x")[0].id
    assert sleeps[0] == 2.0
    assert 0 <= sleeps[1] <= 0.2 and 0 <= sleeps[2] <= 0.4


def test_run_that_times_out_after_acceptance_is_never_resent(fake: FakeRunPod) -> None:
    # Given RunPod takes the job but the answer never arrives
    fake.script("run", Reply(accept_then_hang=True))

    # When /run is called, the outcome is unknown and it is not retried
    with pytest.raises(RunPodOutcomeUnknown):
        run(make_client(fake.base_url, []))

    assert len(fake.calls_to("run")) == 1 and len(fake.runs_for("job_x")) == 1


def test_run_answered_504_is_an_unknown_outcome(fake: FakeRunPod) -> None:
    fake.script("run", Reply(504))

    with pytest.raises(RunPodOutcomeUnknown):
        run(make_client(fake.base_url, []))

    assert len(fake.calls_to("run")) == 1


def test_run_that_cannot_connect_is_retried_then_unavailable() -> None:
    # Given nothing listens on the port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []

    # When /run is called, every attempt fails before sending: safe to retry, then RunPodUnavailable
    with pytest.raises(RunPodUnavailable):
        run(make_client(f"http://127.0.0.1:{port}", sleeps, retries=2))
    assert len(sleeps) == 2


def test_retry_budget_exhausted_is_unavailable(fake: FakeRunPod) -> None:
    fake.script("run", *[Reply(429, retry_after="0")] * 3)

    with pytest.raises(RunPodUnavailable):
        run(make_client(fake.base_url, [], retries=2))

    assert len(fake.calls_to("run")) == 3 and fake.runs_for("job_x") == []


def test_status_is_retried_after_a_timeout(fake: FakeRunPod) -> None:
    # Given a job, and a /status that hangs once
    client = make_client(fake.base_url, [])
    job = run(client)
    fake.script("status", Reply(hang=True))

    # When its status is read, the safe GET is simply repeated
    assert client.status("ep", job.id).status == "IN_QUEUE"
    assert len(fake.calls_to("status")) == 2


def test_errors_are_typed(fake: FakeRunPod) -> None:
    client = make_client(fake.base_url, [])
    with pytest.raises(RunPodNotFound):
        client.status("ep", "no-such-job")
    with pytest.raises(RunPodAuthError):
        run(make_client(fake.base_url, [], api_key="wrong"))
    fake.script("run", Reply(400, body={"error": "input too large"}))
    with pytest.raises(RunPodError) as bad:
        run(client)
    assert bad.value.status_code == 400 and not isinstance(bad.value, RunPodUnavailable)
    assert len(fake.calls_to("run")) == 2  # the 401 and the 400, neither retried


def test_cancel_and_health(fake: FakeRunPod) -> None:
    client = make_client(fake.base_url, [])
    job = run(client)

    assert client.cancel("ep", job.id).status == "CANCELLED"
    assert client.status("ep", job.id).status == "CANCELLED"
    assert client.health("ep")["jobs"]["inQueue"] == 0


def test_oversized_run_body_is_refused_before_sending(fake: FakeRunPod) -> None:
    with pytest.raises(RunPodError, match="10485760"):
        make_client(fake.base_url, []).run("ep", {"blob": "x" * (10 * 1024 * 1024)}, webhook=None, execution_timeout_ms=5000,
                                           ttl_ms=10_000)
    assert fake.calls == []


def test_billed_seconds_are_execution_plus_delay() -> None:
    assert RunPodJob(id="a", status="COMPLETED", delayTime=1500, executionTime=60_000).billed_seconds == 61.5
    assert RunPodJob(id="a", status="IN_QUEUE").billed_seconds is None
