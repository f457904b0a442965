"""Facts about the worker image files that cannot be run here (no docker): Dockerfile, entry point, requirements."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = (REPO / "handler_image" / "Dockerfile").read_text()
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASS|API_KEY|KEY|ACCESS_KEY|CREDENTIALS?)($|_)", re.IGNORECASE)


def instructions(name: str) -> list[str]:
    """Dockerfile instructions of one kind, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.strip()[len(name):].strip() for line in joined.splitlines() if line.strip().upper().startswith(name + " ")]


def test_base_image_matches_ai_toolkits_cuda_and_torch_pins():
    assert instructions("FROM") == ["nvidia/cuda:13.0.3-runtime-ubuntu24.04"]
    assert "torch==2.13.0" in DOCKERFILE and "download.pytorch.org/whl/cu130" in DOCKERFILE and "python3.12" in DOCKERFILE


def test_ai_toolkit_is_cloned_and_checked_out_at_a_pinned_40_hex_commit():
    commit = re.search(r"^ARG AI_TOOLKIT_COMMIT=([0-9a-f]+)$", DOCKERFILE, re.MULTILINE)
    assert commit and len(commit.group(1)) == 40
    run = " ".join(instructions("RUN"))
    assert "git clone" in run and "ostris/ai-toolkit" in DOCKERFILE
    assert 'git checkout --detach "${AI_TOOLKIT_COMMIT}"' in run
    assert 'test "$(git rev-parse HEAD)" = "${AI_TOOLKIT_COMMIT}"' in run  # a moved ref cannot slip in
    assert "pip install -r requirements.txt" in run  # AI-Toolkit's own pinned requirements


def test_cmd_runs_the_handler_unbuffered():
    assert instructions("CMD") == ['["python", "-u", "handler.py"]']


def test_an_init_reaps_orphaned_engine_processes():
    # Given the image's entrypoint and packages
    # Then PID 1 is tini (installed by apt), not the handler, so SIGKILLed engine children never pile up as zombies
    assert instructions("ENTRYPOINT") == ['["/usr/bin/tini", "--"]']
    assert any(" tini " in f" {line} " for line in instructions("RUN"))


def test_no_secret_is_baked_into_the_image():
    names = [pair.split("=", 1)[0] for line in instructions("ENV") + instructions("ARG") for pair in line.split()]
    assert names and "AI_TOOLKIT_COMMIT" in names
    assert [n for n in names if SECRET_NAME.search(n)] == []
    assert "HF_TOKEN" not in " ".join(instructions("ENV") + instructions("ARG"))


def test_the_image_carries_the_contract_package_and_the_worker():
    copies = instructions("COPY")
    sources = " ".join(copies)
    for part in ("loraforge/contract.py", "loraforge/signing.py", "loraforge/models", "loraforge/datasets", "loraforge/presets",
                 "handler_image/loraforge_worker", "handler_image/handler.py"):
        assert part in sources, part


def test_worker_requirements_are_pinned_exactly():
    lines = [line for line in (REPO / "handler_image" / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][\w.]*", line) for line in lines)
    assert "runpod==1.12.0" in lines


@pytest.fixture
def handler_module():
    spec = importlib.util.spec_from_file_location("worker_handler_entry", REPO / "handler_image" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_home_goes_to_the_network_volume_only_when_one_is_mounted(handler_module, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("LORAFORGE_MODEL_CACHE", raising=False)
    # Without a volume nothing changes
    monkeypatch.setattr(handler_module, "NETWORK_VOLUME", tmp_path / "missing")
    handler_module.configure_environment()
    import os
    assert "HF_HOME" not in os.environ
    # With a volume the caches live on it
    monkeypatch.setattr(handler_module, "NETWORK_VOLUME", tmp_path)
    handler_module.configure_environment()
    assert os.environ["HF_HOME"] == str(tmp_path / "huggingface")
    assert os.environ["LORAFORGE_MODEL_CACHE"] == str(tmp_path / "loraforge" / "models")


def test_the_handler_is_async(handler_module):
    import inspect

    assert inspect.iscoroutinefunction(handler_module.async_handler)
