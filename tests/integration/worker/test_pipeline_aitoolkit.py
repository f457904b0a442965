"""The handler pipeline with the ai-toolkit engine, run in-process against moto S3, with the AI-Toolkit
test double (tests/support/fake_aitoolkit.py) as `run.py`: events, uploads, outcome judgement, resume,
time limit and cancel.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from loraforge.contract import Engine, ResumeFrom, WorkerErrorCode
from loraforge.dal.storage import Storage
from loraforge_worker.engines.process import group_alive
from loraforge_worker.pipeline import handle
from loraforge_worker.runtime import WorkerRuntime
from loraforge_worker.safetensors_header import training_step
from tests.integration.worker.helpers import (
    CallbackReceiver,
    aitoolkit_spec,
    dataset_zip,
    fake_toolkit_dir,
    new_secret,
    objects_under,
    put_dataset,
    read_object,
    worker_input,
)

OWNER = "alice"


@pytest.fixture
def toolkit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = fake_toolkit_dir(tmp_path / "ai-toolkit")
    monkeypatch.setenv("AI_TOOLKIT_DIR", str(folder))
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.01")
    return folder


@pytest.fixture
def receiver() -> CallbackReceiver:
    server = CallbackReceiver(secret=new_secret()).start()
    yield server
    server.stop()


def runtime(tmp_path: Path, **overrides: object) -> WorkerRuntime:
    rt = WorkerRuntime(work_root=tmp_path / "work", worker_id="test-worker", stop_grace_seconds=2.0, sample_poll_seconds=0.1)
    for key, value in overrides.items():
        setattr(rt, key, value)
    return rt


def make_input(aws_stack, receiver: CallbackReceiver, job_id: str, **kwargs: object):
    storage = Storage()
    dataset = put_dataset(storage, OWNER, f"ds_{job_id}", dataset_zip(count=4))
    spec = kwargs.pop("spec", None) or aitoolkit_spec()
    return storage, worker_input(storage, job_id=job_id, owner=OWNER, engine=Engine.AI_TOOLKIT, spec=spec, dataset=dataset,
                                 callback_url=receiver.url, secret=receiver.secret, **kwargs)


def run(job_id: str, inp, rt: WorkerRuntime) -> dict:
    return asyncio.run(handle({"id": f"rp-{job_id}", "input": inp.model_dump(mode="json")}, rt))


def test_successful_run_uploads_checkpoints_samples_final_and_reports_ordered_signed_events(aws_stack, toolkit, receiver, tmp_path):
    # Given a 6-step ai-toolkit job saving every 2 steps and sampling every 3
    storage, inp = make_input(aws_stack, receiver, "job_ok")

    # When the handler runs it
    out = run("job_ok", inp, runtime(tmp_path))

    # Then the result manifest says completed, with a verified final file at the job prefix
    assert "error" not in out, out
    assert out["status"] == "completed" and out["steps"] == 6 and out["total_steps"] == 6
    prefix = inp.output.prefix
    stored = objects_under(storage, prefix)
    assert out["final"]["key"] == f"{prefix}final/job_ok.safetensors"
    assert out["final"]["key"] in stored
    checkpoints = sorted(k for k in stored if k.startswith(f"{prefix}checkpoints/job_ok_"))
    assert checkpoints == [f"{prefix}checkpoints/job_ok_000000002.safetensors", f"{prefix}checkpoints/job_ok_000000004.safetensors"]
    assert f"{prefix}checkpoints/optimizer_000000002.pt" in stored
    assert any(k.startswith(f"{prefix}samples/") and "__000000003_0" in k for k in stored)
    assert {f"{prefix}logs/train-a1.log", f"{prefix}logs/metrics-a1.csv", f"{prefix}logs/config-a1.yaml"} <= set(stored)
    # every artifact in the manifest is in S3 with the size and sha256 it claims
    import hashlib
    for artifact in out["artifacts"]:
        data = read_object(storage, artifact["key"])
        assert len(data) == artifact["size"] and hashlib.sha256(data).hexdigest() == artifact["sha256"]
    assert all(v >= 0 for v in out["timings"].values())

    # And the events are signed, numbered 1..n in order, started first and completed last
    events = receiver.events("job_ok")
    assert all(r.verified for r in receiver.received)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "started"
    assert events[0]["data"] == {"runpod_job_id": "rp-job_ok", "dispatch_token": "tok-job_ok", "worker_id": "test-worker"}
    assert {e["runpod_job_id"] for e in events} == {"rp-job_ok"}  # every event names its RunPod run
    assert events[-1]["type"] == "completed" and events[-1]["data"]["final"]["key"] == out["final"]["key"]
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress and all(p["total_steps"] == 6 and p["loss"] is not None for p in progress)
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)
    assert sorted({m["step"] for p in progress for m in p["metrics"]}) == [1, 2, 3, 4, 5, 6]
    checkpoint_keys = {e["data"]["key"] for e in events if e["type"] == "checkpoint"}
    assert set(checkpoints) <= checkpoint_keys
    assert any(e["type"] == "sample" for e in events)
    # And no secret or URL went into the engine config that AI-Toolkit echoes to its log
    config_text = read_object(storage, f"{prefix}logs/config-a1.yaml").decode()
    assert receiver.secret not in config_text and "http" not in config_text and "Signature" not in config_text


def test_duplicate_run_refused_by_the_api_stops_before_training(aws_stack, toolkit, receiver, tmp_path):
    # Given an API that answers 409 to the started event (another RunPod run holds the job)
    receiver.responses["started"] = 409
    storage, inp = make_input(aws_stack, receiver, "job_dup")

    # When the handler runs
    out = run("job_dup", inp, runtime(tmp_path))

    # Then it fails with DUPLICATE_RUN and trains nothing
    assert out["error"].startswith("DUPLICATE_RUN:")
    assert out["status"] == "failed" and out["steps"] == 0
    assert objects_under(storage, inp.output.prefix) == {}


@pytest.mark.parametrize(("mode", "code", "kind"), [
    ("oom", "GPU_OOM", "user"),
    ("crash", "ENGINE_CRASHED", "system"),
    ("incomplete", "ENGINE_INCOMPLETE", "system"),
    ("no_final", "ENGINE_INCOMPLETE", "system"),
])
def test_engine_failures_are_classified(aws_stack, toolkit, receiver, tmp_path, monkeypatch, mode, code, kind):
    # Given a trainer that fails in a known way
    monkeypatch.setenv("FAKE_AITK_MODE", mode)
    storage, inp = make_input(aws_stack, receiver, f"job_{mode}")

    # When the handler runs
    out = run(f"job_{mode}", inp, runtime(tmp_path))

    # Then the result is failed with the code and kind, and the log still reaches S3
    assert out["error"].startswith(f"{code}:"), out["error"]
    failed = receiver.events(f"job_{mode}")[-1]
    assert failed["type"] == "failed" and failed["data"]["error"]["code"] == code and failed["data"]["error"]["kind"] == kind
    assert f"{inp.output.prefix}logs/train-a1.log" in objects_under(storage, inp.output.prefix)
    assert f"{inp.output.prefix}final/job_{mode}.safetensors" not in objects_under(storage, inp.output.prefix)


def test_split_wan22_final_files_are_both_verified_and_uploaded(aws_stack, toolkit, receiver, tmp_path, monkeypatch):
    # Given Wan 2.2 14B's split high/low-noise LoRA files
    monkeypatch.setenv("FAKE_AITK_MODE", "split")
    storage, inp = make_input(aws_stack, receiver, "job_wan", spec=aitoolkit_spec("wan22-14b"))

    # When the handler runs
    out = run("job_wan", inp, runtime(tmp_path))

    # Then both files are uploaded (checkpoints and finals) and the first is the result
    assert "error" not in out, out
    stored = objects_under(storage, inp.output.prefix)
    assert out["final"]["name"] == "job_wan_high_noise.safetensors"
    assert f"{inp.output.prefix}final/job_wan_low_noise.safetensors" in stored
    assert f"{inp.output.prefix}checkpoints/job_wan_000000002_low_noise.safetensors" in stored


def test_resume_places_the_checkpoint_and_continues_from_its_step(aws_stack, toolkit, receiver, tmp_path):
    # Given a first attempt that stored checkpoints
    storage, first = make_input(aws_stack, receiver, "job_res")
    assert "error" not in run("job_res", first, runtime(tmp_path))
    key = f"{first.output.prefix}checkpoints/job_res_000000004.safetensors"
    resume = ResumeFrom(step=4, checkpoint_url=storage.presigned_get(key, 600)[0], checkpoint_name="job_res_000000004.safetensors",
                        optimizer_url=None)
    _, second = make_input(aws_stack, receiver, "job_res", attempt=2, resume=resume)

    # When attempt 2 runs with that checkpoint
    out = run("job_res", second, runtime(tmp_path))

    # Then the engine resumed at step 4 and only trained steps 5-6
    assert "error" not in out, out
    attempt2 = [e for e in receiver.events("job_res") if e["attempt"] == 2]
    steps = sorted({m["step"] for e in attempt2 if e["type"] == "progress" for m in e["data"]["metrics"]})
    assert steps == [5, 6]
    log = read_object(storage, f"{second.output.prefix}logs/train-a2.log").decode()
    assert "Found step 4 in metadata, starting from there" in log


def test_time_limit_stops_the_engine_cleanly_and_keeps_the_last_checkpoint(aws_stack, toolkit, receiver, tmp_path, monkeypatch):
    # Given a slow 200-step run and a time limit that leaves ~3 s of training
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.05")
    storage, inp = make_input(aws_stack, receiver, "job_tl", spec=aitoolkit_spec(steps=200, checkpoint_every=10, sample_every=100),
                              time_limit_seconds=60)
    rt = runtime(tmp_path)
    rt.time_limit_reserve = lambda limit: limit - 3  # type: ignore[method-assign]

    # When the handler runs past the limit
    out = run("job_tl", inp, rt)

    # Then it stops with TIMEOUT (kind system) and the checkpoints saved so far are in S3
    assert out["error"].startswith("TIMEOUT:"), out["error"]
    assert "last checkpoint" in out["error"]
    stored = objects_under(storage, inp.output.prefix)
    assert any(k.startswith(f"{inp.output.prefix}checkpoints/job_tl_") for k in stored)
    assert 0 < out["steps"] < 200


def _engine_pgid(job_id: str) -> int | None:
    """The process group of the running engine (the supervisor leads it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"launch.py") for part in cmdline) and any(job_id.encode() in part for part in cmdline):
            return os.getpgid(int(entry.name))
    return None


@pytest.mark.parametrize("mode", ["ok", "ignore_sigint"])
def test_cancel_stops_the_engine_group_keeps_complete_checkpoints_and_reraises(aws_stack, toolkit, receiver, tmp_path, monkeypatch, mode):
    # Given a long run (an engine that may even ignore SIGINT)
    monkeypatch.setenv("FAKE_AITK_MODE", mode)
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.05")
    job_id = f"job_cancel_{mode}"
    storage, inp = make_input(aws_stack, receiver, job_id, spec=aitoolkit_spec(steps=1000, checkpoint_every=5, sample_every=500))
    rt = runtime(tmp_path, stop_grace_seconds=1.0)

    async def scenario() -> int | None:
        task = asyncio.create_task(handle({"id": f"rp-{job_id}", "input": inp.model_dump(mode="json")}, rt))
        while not any(e["type"] == "checkpoint" for e in receiver.events(job_id)):
            await asyncio.sleep(0.05)
        pgid = await asyncio.to_thread(_engine_pgid, job_id)
        # When RunPod cancels the handler task
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pgid

    pgid = asyncio.run(scenario())

    # Then the engine's process group is gone, a cancelled event was sent and every stored checkpoint is complete
    assert pgid is not None and not group_alive(pgid)
    events = receiver.events(job_id)
    assert events[-1]["type"] == "cancelled"
    assert events[-1]["data"]["error"]["code"] == WorkerErrorCode.CANCELLED.value
    stored = objects_under(storage, inp.output.prefix)
    checkpoints = [k for k in stored if k.endswith(".safetensors")]
    assert checkpoints
    for key in checkpoints:
        path = tmp_path / "check.safetensors"
        path.write_bytes(read_object(storage, key))
        assert training_step(path) == int(key.rsplit("_", 1)[1].split(".")[0])
    assert json.loads(json.dumps(events[-1]["data"]))["status"] == "cancelled"
