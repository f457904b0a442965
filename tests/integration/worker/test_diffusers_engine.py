"""The diffusers engine through the handler pipeline (in-process, moto S3): resume restores the LoRA
weights AND the optimizer state, so a resumed run ends bit-identical to an uninterrupted one; SIGINT
stops the trainer cooperatively (`Job stopped`, exit 0)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loraforge.contract import Engine, ResumeFrom
from loraforge.dal.storage import Storage
from loraforge_worker.pipeline import handle
from loraforge_worker.runtime import WorkerRuntime
from tests.integration.worker.helpers import dataset_zip, put_dataset, read_object, tiny_sd_spec, worker_input

pytestmark = pytest.mark.slow
OWNER = "carol"


@pytest.fixture
def model_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "tiny-sd-models"
    monkeypatch.setenv("LORAFORGE_MODEL_CACHE", str(cache))
    return cache


def runtime(tmp_path: Path, **kw) -> WorkerRuntime:
    return WorkerRuntime(work_root=tmp_path / "work", worker_id="w", stop_grace_seconds=5.0, sample_poll_seconds=0.1, **kw)


def test_resume_from_a_stored_checkpoint_continues_exactly_where_the_run_left_off(aws_stack, receiver, model_cache, tmp_path):
    from safetensors.torch import load_file

    # Given an uninterrupted 12-step run that stored checkpoints (and their optimizer state) every 4 steps
    storage = Storage()
    dataset = put_dataset(storage, OWNER, "ds_resume", dataset_zip(count=8))
    spec = tiny_sd_spec(steps=12, checkpoint_every=4, sample_every=12)
    first = worker_input(storage, job_id="job_full", owner=OWNER, engine=Engine.DIFFUSERS, spec=spec, dataset=dataset,
                         callback_url=receiver.url, secret=receiver.secret)
    out = asyncio.run(handle({"id": "rp-1", "input": first.model_dump(mode="json")}, runtime(tmp_path)))
    assert "error" not in out, out
    prefix = first.output.prefix
    checkpoint, optimizer = f"{prefix}checkpoints/job_full_000000008.safetensors", f"{prefix}checkpoints/optimizer_000000008.pt"
    assert {a["key"] for a in out["artifacts"]} >= {checkpoint, optimizer}

    # When a second job resumes from the step-8 checkpoint and its optimizer state
    resume = ResumeFrom(step=8, checkpoint_url=storage.presigned_get(checkpoint, 600)[0], checkpoint_name="job_full_000000008.safetensors",
                        optimizer_url=storage.presigned_get(optimizer, 600)[0])
    second = worker_input(storage, job_id="job_full", owner="dave", engine=Engine.DIFFUSERS, spec=spec, dataset=dataset, attempt=2,
                          resume=resume, callback_url=receiver.url, secret=receiver.secret)
    resumed = asyncio.run(handle({"id": "rp-2", "input": second.model_dump(mode="json")}, runtime(tmp_path)))

    # Then it trained only steps 9-12, said so in its log, and its LoRA equals the uninterrupted run's, tensor for tensor
    assert "error" not in resumed, resumed
    steps = sorted({m["step"] for e in receiver.events("job_full") if e["attempt"] == 2 and e["type"] == "progress"
                    for m in e["data"]["metrics"]})
    assert steps == [9, 10, 11, 12]
    log = read_object(storage, f"{second.output.prefix}logs/train-a2.log").decode()
    assert "Found step 8 in metadata, starting from there" in log and "Loading optimizer state" in log
    # and the worker's resume check agrees: honoured, no RESUME_NOT_HONOURED warning
    assert resumed["resume"] == {"requested_step": 8, "started_step": 8, "honoured": True}
    assert not [e for e in receiver.events("job_full") if e["type"] == "log" and e["data"].get("code") == "RESUME_NOT_HONOURED"]
    (tmp_path / "a.safetensors").write_bytes(read_object(storage, out["final"]["key"]))
    (tmp_path / "b.safetensors").write_bytes(read_object(storage, resumed["final"]["key"]))
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_cancel_stops_the_diffusers_trainer_cooperatively(aws_stack, receiver, model_cache, tmp_path):
    storage = Storage()
    dataset = put_dataset(storage, OWNER, "ds_stop", dataset_zip(count=4))
    inp = worker_input(storage, job_id="job_stop", owner=OWNER, engine=Engine.DIFFUSERS, dataset=dataset,
                       spec=tiny_sd_spec(steps=1000, checkpoint_every=5, sample_every=1000), callback_url=receiver.url,
                       secret=receiver.secret)
    rt = runtime(tmp_path, keep_workspace=True)

    async def scenario() -> None:
        task = asyncio.create_task(handle({"id": "rp-3", "input": inp.model_dump(mode="json")}, rt))
        while not any(e["type"] == "checkpoint" for e in receiver.events("job_stop")):
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())

    # The trainer got SIGINT at its default disposition and exited the AI-Toolkit way, well within the grace period
    (log,) = (tmp_path / "work").glob("job_stop-a1-*/logs/train-a1.log")
    text = log.read_text()
    assert "Job stopped" in text
    assert not list((tmp_path / "work").glob("job_stop-a1-*/output/job_stop/job_stop.safetensors"))
