"""Fixtures for the dispatch / hooks / reconcile tests: moto (aws_stack) plus the fake RunPod server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from loraforge.providers.runpod import reset_runpod_client
from loraforge.settings import reset_settings
from tests.integration.dispatch.helpers import ENDPOINTS, PRICES, PUBLIC_API_URL, ControlPlane
from tests.support.fake_runpod import FakeRunPod


@pytest.fixture(scope="session")
def fake_runpod_server() -> Iterator[FakeRunPod]:
    server = FakeRunPod(hang_seconds=1.0).start()
    yield server
    server.stop()


@pytest.fixture
def runpod(fake_runpod_server: FakeRunPod) -> Iterator[FakeRunPod]:
    fake_runpod_server.reset()
    yield fake_runpod_server
    fake_runpod_server.reset()


@pytest.fixture
def plane(aws_stack, runpod: FakeRunPod, lambda_context, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    """The Lambda environment of aws_stack, pointed at the fake RunPod; retries without sleeping, short timeouts."""
    for name, value in {
        "RUNPOD_BASE_URL": runpod.base_url,
        "RUNPOD_ENDPOINTS": json.dumps(ENDPOINTS),
        "GPU_PRICES": json.dumps(PRICES),
        "PUBLIC_API_URL": PUBLIC_API_URL,
        "RUNPOD_BACKOFF_SECONDS": "0",
        "RUNPOD_MAX_RETRIES": "3",
        "RUNPOD_TIMEOUT_SECONDS": "0.5",
        "GLOBAL_CONCURRENCY": "4",
        "OWNER_CONCURRENCY": "4",
    }.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    reset_runpod_client()
    yield ControlPlane(runpod=runpod, context=lambda_context)
    reset_runpod_client()


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch):
    """Change Lambda environment variables inside a test (settings and the RunPod client are rebuilt)."""

    def apply(**env: str) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        reset_runpod_client()

    return apply
