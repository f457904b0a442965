"""Input validation, result shapes and the safetensors header check of the handler."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import pytest

from loraforge.contract import WorkerErrorCode, WorkerResult
from loraforge.models.errors import JobError
from loraforge_worker.errors import WorkerFailure
from loraforge_worker.pipeline import failure_output, handle, parse_input
from loraforge_worker.runtime import WorkerRuntime
from loraforge_worker.safetensors_header import is_complete, read_metadata, training_step


@pytest.mark.parametrize(("raw", "code"), [
    ("a string", WorkerErrorCode.INVALID_INPUT),
    ({}, WorkerErrorCode.INVALID_INPUT),
    ({"job_id": "job_1", "engine": "comfyui"}, WorkerErrorCode.UNKNOWN_ENGINE),
    ({"job_id": "job_1", "engine": "diffusers"}, WorkerErrorCode.INVALID_INPUT),
])
def test_bad_inputs_are_classified(raw, code):
    with pytest.raises(WorkerFailure) as err:
        parse_input(raw)
    assert err.value.code == code


def test_a_missing_field_is_named_in_the_message():
    with pytest.raises(WorkerFailure) as err:
        parse_input({"job_id": "job_1", "engine": "diffusers"})
    assert "spec" in err.value.message and "dataset" in err.value.message


def test_handle_returns_a_failed_manifest_without_raising(tmp_path: Path):
    out = asyncio.run(handle({"id": "rp-1", "input": {"job_id": "job_9", "attempt": 2}}, WorkerRuntime(work_root=tmp_path)))
    assert out["error"].startswith("INVALID_INPUT: ")
    assert out["job_id"] == "job_9" and out["attempt"] == 2 and out["status"] == "failed"
    json.dumps(out)  # RunPod sends it as JSON


def test_failure_output_puts_the_error_string_on_top_for_runpod():
    result = WorkerResult(job_id="j", attempt=1, status="failed", error=JobError(code="GPU_OOM", message="too big", kind="user"))
    out = failure_output(result)
    assert out["error"] == "GPU_OOM: too big" and out["status"] == "failed"


def write_safetensors(path: Path, metadata: dict[str, str], data: bytes = b"\0" * 16, declared: int = 16) -> Path:
    header = json.dumps({"__metadata__": metadata, "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, declared]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_training_step_and_completeness_of_a_lora_file(tmp_path: Path):
    good = write_safetensors(tmp_path / "a.safetensors", {"training_info": json.dumps({"step": 12, "epoch": 3})})
    assert training_step(good) == 12 and is_complete(good) and read_metadata(good)["training_info"]
    truncated = write_safetensors(tmp_path / "b.safetensors", {"training_info": json.dumps({"step": 12})}, data=b"\0" * 8)
    assert not is_complete(truncated)
    no_info = write_safetensors(tmp_path / "c.safetensors", {"format": "pt"})
    assert training_step(no_info) is None
    garbage = tmp_path / "d.safetensors"
    garbage.write_bytes(b"\xff" * 4)
    assert not is_complete(garbage)
