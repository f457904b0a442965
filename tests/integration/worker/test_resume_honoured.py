"""The worker checks that the engine really resumed (AI-Toolkit #1058: a resume that restarts at step 0), with the
AI-Toolkit test double as `run.py` (tests/support/fake_aitoolkit.py, knob FAKE_AITK_RESUME), in-process against moto S3.

A resume the engine does not honour is never hidden: a `RESUME_NOT_HONOURED` warning event with the expected and the
actual step, progress from where the engine really is, and the result's `resume` report. An honoured one says nothing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from loraforge.contract import CheckpointFile, Engine, ResumeFrom
from loraforge.dal import keys
from loraforge.dal.storage import Storage
from loraforge_worker.pipeline import handle
from loraforge_worker.runtime import WorkerRuntime
from tests.integration.worker.helpers import (
    CallbackReceiver,
    aitoolkit_spec,
    dataset_zip,
    put_dataset,
    read_object,
    worker_input,
)
from tests.support.fake_aitoolkit import write_safetensors

OWNER = "alice"
RESUME_STEP = 4
TOTAL = 6


def resumed_run(aws_stack, receiver: CallbackReceiver, tmp_path: Path, job_id: str) -> dict:
    """Attempt 2 of a 6-step sd15 job, resuming from its stored step-4 checkpoint (as a retry dispatches it)."""
    storage = Storage()
    name = f"{job_id}_{RESUME_STEP:09d}.safetensors"
    local = tmp_path / name
    write_safetensors(local, RESUME_STEP)
    body = local.read_bytes()
    key = keys.job_artifact_key(OWNER, job_id, "checkpoint", name)
    storage.put_bytes(key, body)
    resume = ResumeFrom(step=RESUME_STEP, files=[CheckpointFile(url=storage.presigned_get(key, 600)[0], name=name,
                                                                sha256=hashlib.sha256(body).hexdigest(), size=len(body))])
    dataset = put_dataset(storage, OWNER, f"ds_{job_id}", dataset_zip(count=4))
    inp = worker_input(storage, job_id=job_id, owner=OWNER, engine=Engine.AI_TOOLKIT, spec=aitoolkit_spec(steps=TOTAL), dataset=dataset,
                       callback_url=receiver.url, secret=receiver.secret, attempt=2, resume=resume)
    rt = WorkerRuntime(work_root=tmp_path / "work", worker_id="test-worker", stop_grace_seconds=2.0, sample_poll_seconds=0.1)
    out = asyncio.run(handle({"id": f"rp-{job_id}", "input": inp.model_dump(mode="json")}, rt))
    out["log"] = read_object(storage, f"{inp.output.prefix}logs/train-a2.log").decode()
    return out


def warnings(receiver: CallbackReceiver, job_id: str) -> list[dict]:
    return [e["data"] for e in receiver.events(job_id) if e["type"] == "log" and e["data"].get("code") == "RESUME_NOT_HONOURED"]


def trained_steps(receiver: CallbackReceiver, job_id: str) -> list[int]:
    return sorted({m["step"] for e in receiver.events(job_id) if e["type"] == "progress" for m in e["data"]["metrics"]})


@pytest.mark.parametrize("mode", ["ignore", "restart"])
def test_an_engine_that_does_not_resume_is_reported_and_its_progress_counts_from_where_it_started(
        aws_stack, toolkit, receiver, tmp_path, monkeypatch, mode):
    # Given an engine that trains from step 0 although the step-4 checkpoint is in place: without a word (ignore), or
    # after printing that it resumes from step 4 (restart, AI-Toolkit #1058)
    monkeypatch.setenv("FAKE_AITK_RESUME", mode)

    # When attempt 2 runs, resuming from step 4
    out = resumed_run(aws_stack, receiver, tmp_path, f"job_{mode}")

    # Then the run completes, and the job hears once, as a warning, that the engine started at step 0 instead of 4
    assert "error" not in out, out
    (warning,) = warnings(receiver, f"job_{mode}")
    assert (warning["level"], warning["expected_step"], warning["actual_step"]) == ("warning", RESUME_STEP, 0)
    assert warning["lines"][0].startswith("RESUME_NOT_HONOURED: the trainer started at step 0, not at step 4")
    # And progress is reported as the engine really ran: every step from 1, the retrained ones included
    assert trained_steps(receiver, f"job_{mode}") == [1, 2, 3, 4, 5, 6]
    # And the result says where training really started
    assert out["resume"] == {"requested_step": RESUME_STEP, "started_step": 0, "honoured": False}
    assert ("Found step 4 in metadata" in out["log"]) == (mode == "restart")


def test_an_honoured_resume_raises_no_warning(aws_stack, toolkit, receiver, tmp_path):
    # Given an engine that resumes as asked
    # When attempt 2 runs, resuming from step 4
    out = resumed_run(aws_stack, receiver, tmp_path, "job_honoured")

    # Then it trained only steps 5-6, no warning was sent, and the result says the resume was honoured
    assert "error" not in out, out
    assert warnings(receiver, "job_honoured") == []
    assert trained_steps(receiver, "job_honoured") == [5, 6]
    assert out["resume"] == {"requested_step": RESUME_STEP, "started_step": RESUME_STEP, "honoured": True}
