"""Fixtures of the worker tests: a loopback receiver of signed worker events, and the stand-in AI-Toolkit checkout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.worker.helpers import CallbackReceiver, fake_toolkit_dir, new_secret


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver(secret=new_secret()).start()
    yield server
    server.stop()


@pytest.fixture
def toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in AI-Toolkit (tests/support/fake_aitoolkit.py) as AI_TOOLKIT_DIR, 10 ms a step."""
    folder = fake_toolkit_dir(tmp_path / "ai-toolkit")
    monkeypatch.setenv("AI_TOOLKIT_DIR", str(folder))
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.01")
    return folder
