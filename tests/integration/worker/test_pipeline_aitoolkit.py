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
from loraforge.dal import keys
from loraforge.dal.storage import Storage
from loraforge_worker.engines.process import group_alive
from loraforge_worker.pipeline import handle
from loraforge_worker.runtime import WorkerRuntime
from loraforge_worker.safetensors_header import training_step
from tests.integration.worker.helpers import (
    CallbackReceiver,
    StoredDataset,
    aitoolkit_spec,
    dataset_zip,
    ingest_manifest,
    mixed_dataset_zip,
    objects_under,
    put_dataset,
    read_object,
    worker_input,
)

OWNER = "alice"


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


def stored_mixed_dataset(storage: Storage, tmp_path: Path, dataset_id: str, **manifest_changes: object) -> tuple[StoredDataset, str]:
    """An archive holding files ingest rejected, stored with the manifest ingest wrote for it; returns the manifest's URL."""
    data = mixed_dataset_zip()
    dataset = put_dataset(storage, OWNER, dataset_id, data)
    local = tmp_path / f"{dataset_id}.zip"
    local.write_bytes(data)
    manifest = ingest_manifest(local, archive_sha256=dataset.sha256).model_copy(update=manifest_changes)
    manifest_key = keys.dataset_manifest_key(OWNER, dataset_id)
    storage.put_json(manifest_key, manifest.model_dump(mode="json"))
    return dataset, storage.presigned_get(manifest_key, 3600)[0]


def test_a_relative_work_dir_still_trains_with_the_engine_running_in_its_own_folder(aws_stack, toolkit, receiver, tmp_path, monkeypatch):
    # Given an operator who set LORAFORGE_WORK_DIR to a relative path (the engine runs with AI-Toolkit's folder as its cwd)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LORAFORGE_WORK_DIR", "jobs")
    storage, inp = make_input(aws_stack, receiver, "job_rel")
    rt = WorkerRuntime(worker_id="test-worker", stop_grace_seconds=2.0, sample_poll_seconds=0.1)

    # When the handler runs the job
    out = run("job_rel", inp, rt)

    # Then the engine found its dataset and the worker found the engine's saves: a completed run with its final LoRA in S3
    assert "error" not in out, out
    assert out["final"]["key"] in objects_under(storage, inp.output.prefix)


def test_the_run_trains_on_exactly_what_ingest_accepted(aws_stack, toolkit, receiver, tmp_path):
    # Given a stored archive with a duplicate, an image below min_side and a pair with a broken caption, and its manifest
    storage = Storage()
    dataset, manifest_url = stored_mixed_dataset(storage, tmp_path, "ds_mixed")
    inp = worker_input(storage, job_id="job_manifest", owner=OWNER, engine=Engine.AI_TOOLKIT, spec=aitoolkit_spec(), dataset=dataset,
                       callback_url=receiver.url, secret=receiver.secret, manifest_url=manifest_url)

    # When the handler runs it (keeping its workspace, to look at the training folder)
    out = run("job_manifest", inp, runtime(tmp_path, keep_workspace=True))

    # Then it trained on a folder holding exactly the manifest's accepted items, with their final captions
    assert out["status"] == "completed", out
    [folder] = list((tmp_path / "work").glob("*/dataset"))
    files = sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".jpg", ".txt"))
    assert files == ["a.png", "a.txt", "b.png", "b.txt", "c.png", "c.txt", "d.jpg", "d.txt"]
    captions = {p.stem: p.read_text(encoding="utf-8") for p in folder.glob("*.txt")}
    assert captions == {"a": "a photo of ohwx smiling", "b": "ohwx", "c": "ohwx in the rain", "d": "ohwx, a red square"}
    # and the left-out files are reported with ingest's reasons
    lines = [line for e in receiver.events("job_manifest") if e["type"] == "log" for line in e["data"].get("lines", [])]
    assert {"skipped set/copy_of_a.png: DUPLICATE_IMAGE", "skipped set/tiny.png: IMAGE_TOO_SMALL",
            "skipped set/latin1.png: CAPTION_NOT_UTF8"} <= set(lines)


def test_an_archive_that_is_not_the_one_its_manifest_describes_is_not_trained(aws_stack, toolkit, receiver, tmp_path):
    # Given a manifest recorded for another archive (the dataset changed after validation)
    storage = Storage()
    dataset, manifest_url = stored_mixed_dataset(storage, tmp_path, "ds_changed", archive_sha256="0" * 64)
    inp = worker_input(storage, job_id="job_changed", owner=OWNER, engine=Engine.AI_TOOLKIT, spec=aitoolkit_spec(), dataset=dataset,
                       callback_url=receiver.url, secret=receiver.secret, manifest_url=manifest_url)

    # When the handler runs
    out = run("job_changed", inp, runtime(tmp_path))

    # Then it fails before training, as a system failure that says why
    assert out["error"].startswith("DATASET_CHECKSUM_MISMATCH:") and "changed after validation" in out["error"]
    failed = receiver.events("job_changed")[-1]
    assert failed["type"] == "failed" and failed["data"]["error"]["kind"] == "system" and out["steps"] == 0
    assert objects_under(storage, inp.output.prefix) == {}


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


def test_a_final_upload_that_would_outlast_the_time_limit_fails_in_time_with_timeout(aws_stack, toolkit, receiver, tmp_path, monkeypatch):
    # Given a run whose training used up all but ~2 s of its 60 s limit, and an S3 that stalls on the final LoRA
    import time as real_time

    from loraforge_worker import pipeline
    from loraforge_worker.session import TrainingSession
    from loraforge_worker.uploader import Uploader

    storage, inp = make_input(aws_stack, receiver, "job_slow_final", time_limit_seconds=60)
    shift = {"seconds": 0.0}

    class ShiftedClock:
        def __getattr__(self, name: str) -> object:
            return getattr(real_time, name)

        def monotonic(self) -> float:
            return real_time.monotonic() + shift["seconds"]

    monkeypatch.setattr(pipeline, "time", ShiftedClock())
    real_upload, real_judge = Uploader.upload, TrainingSession.judge

    def judged_2_s_before_the_limit(self, code):  # type: ignore[no-untyped-def]
        shift["seconds"] = 58.0  # the engine ran until 2 s before the limit
        return real_judge(self, code)

    async def stalls_on_final(self, path, kind, step, name=None):  # type: ignore[no-untyped-def]
        if kind == "final":
            await asyncio.sleep(30)
        return await real_upload(self, path, kind, step, name)

    monkeypatch.setattr(TrainingSession, "judge", judged_2_s_before_the_limit)
    monkeypatch.setattr(Uploader, "upload", stalls_on_final)

    # When the handler runs
    started = real_time.monotonic()
    out = run("job_slow_final", inp, runtime(tmp_path))

    # Then it fails with TIMEOUT within the time left (not after the stalled upload), and no final LoRA is claimed
    assert real_time.monotonic() - started < 20
    assert out["status"] == "failed" and out["error"].startswith("TIMEOUT:"), out
    assert out["final"] is None


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
