"""Acceptance of the worker image through the RunPod emulator: the REAL runpod SDK worker loop in real
`handler_image/handler.py` processes, moto S3 with presigned URLs, the diffusers engine training the
tiny-sd model on CPU, signed events to a loopback receiver.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from loraforge.contract import Engine
from loraforge.dal.storage import Storage
from loraforge.local.runpod_emulator import RunPodEmulator
from loraforge_worker.engines.process import group_alive
from loraforge_worker.safetensors_header import is_complete, read_metadata, training_step
from tests.integration.worker.helpers import (
    dataset_zip,
    fake_toolkit_dir,
    objects_under,
    put_dataset,
    read_object,
    tiny_sd_spec,
    worker_input,
)

pytestmark = pytest.mark.slow
OWNER = "bob"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    toolkit = fake_toolkit_dir(tmp_path_factory.mktemp("ai-toolkit"))
    emu = RunPodEmulator(workers=1, endpoint_id="local-cpu", webhook_retry_delay=0.2, worker_env={
        "LORAFORGE_MODEL_CACHE": str(model_cache), "LORAFORGE_STOP_GRACE_SECONDS": "3", "LORAFORGE_SAMPLE_POLL_SECONDS": "0.2",
        "AI_TOOLKIT_DIR": str(toolkit), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
    }).start()
    try:
        emu.wait_until_ready(120)
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def client(emulator: RunPodEmulator):
    with httpx.Client(base_url=emulator.endpoint_url, timeout=10) as http:
        yield http


def submit(client: httpx.Client, payload: dict, webhook: str | None = None) -> str:
    body: dict = {"input": payload, "policy": {"executionTimeout": 600_000, "ttl": 3_600_000}}
    if webhook:
        body["webhook"] = webhook
    resp = client.post("/run", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "IN_QUEUE"
    return resp.json()["id"]


def poll(client: httpx.Client, run_id: str, timeout: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/status/{run_id}").json()
        if body["status"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return body
        time.sleep(0.2)
    raise TimeoutError(f"{run_id} still {body['status']}")


def engine_pgid(job_id: str, timeout: float = 60.0) -> int:
    """The process group of the job's engine (led by the supervisor, whose argv names the job's config)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"launch.py") for a in argv) and any(job_id.encode() in a for a in argv):
                return os.getpgid(int(entry.name))
        time.sleep(0.1)
    raise TimeoutError(f"no engine process for {job_id}")


def assert_nothing_half_written(storage: Storage, prefix: str, tmp_path: Path) -> dict[str, bytes]:
    """Every object under the prefix is a complete file: LoRA files hold all the bytes their header promises."""
    blobs = {key: read_object(storage, key) for key in objects_under(storage, prefix)}
    for key, data in blobs.items():
        if key.endswith(".safetensors"):
            path = tmp_path / "object.safetensors"
            path.write_bytes(data)
            assert is_complete(path), key
            assert training_step(path) is not None, key
    return blobs


def test_diffusers_job_trains_tiny_sd_for_real_and_publishes_checkpoints_samples_and_a_loadable_lora(
        aws_stack, emulator, client, receiver, model_cache, tmp_path):
    # Given 8 generated images and a 12-step tiny-sd job checkpointing every 4 steps and sampling every 6
    storage = Storage()
    dataset = put_dataset(storage, OWNER, "ds_tiny", dataset_zip(count=8))
    inp = worker_input(storage, job_id="job_tiny", owner=OWNER, engine=Engine.DIFFUSERS, dataset=dataset,
                       spec=tiny_sd_spec(steps=12, checkpoint_every=4, sample_every=6), callback_url=receiver.url, secret=receiver.secret)

    # When it is submitted to the endpoint and runs on the worker
    run_id = submit(client, inp.model_dump(mode="json"), webhook=receiver.base() + "/runpod-hook")
    status = poll(client, run_id)

    # Then RunPod reports COMPLETED with the result manifest, timings included
    assert status["status"] == "COMPLETED", status
    result = status["output"]
    assert result["status"] == "completed" and result["steps"] == 12
    assert status["executionTime"] > 0 and status["delayTime"] >= 0
    prefix = inp.output.prefix
    blobs = assert_nothing_half_written(storage, prefix, tmp_path)
    assert len([k for k in blobs if k.startswith(f"{prefix}checkpoints/job_tiny_")]) >= 2
    assert len([k for k in blobs if k.startswith(f"{prefix}samples/")]) >= 1
    final_key = f"{prefix}final/job_tiny.safetensors"
    assert result["final"]["key"] == final_key and hashlib.sha256(blobs[final_key]).hexdigest() == result["final"]["sha256"]

    # And the events reached the callback signed, in order, with step/total/loss progress
    events = receiver.wait_for(lambda evs: any(e["type"] == "completed" for e in evs), job_id="job_tiny")
    assert all(r.verified for r in receiver.received if r.event.get("job_id") == "job_tiny")
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "started" and events[0]["data"]["runpod_job_id"] == run_id
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert progress and all(p["total_steps"] == 12 and p["loss"] is not None and p["step"] >= 1 for p in progress)
    assert [p["step"] for p in progress] == sorted(p["step"] for p in progress)

    # And training was real: the fixed-noise evaluation loss dropped
    final_path = tmp_path / "final.safetensors"
    final_path.write_bytes(blobs[final_key])
    evaluation = json.loads(read_metadata(final_path)["loraforge_eval"])
    assert evaluation["after"] < evaluation["before"]

    # And the LoRA loads into a fresh pipeline with diffusers' load_lora_weights, tensors equal to the trained ones
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from loraforge_worker.engines.tiny_sd import ensure_tiny_sd

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny_sd(None, model_cache))
    pipe.load_lora_weights(str(tmp_path), weight_name="final.safetensors", adapter_name="job_tiny")
    loaded = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="job_tiny"))
    trained = load_file(str(final_path))
    assert len(loaded) == len(trained) > 0
    assert all(torch.equal(loaded[k], trained[f"unet.{k}"]) for k in loaded)

    # And RunPod's completion webhook carried the cloud body
    deadline = time.monotonic() + 10
    while not [d for d in emulator.webhooks if d.job_id == run_id and d.attempts] and time.monotonic() < deadline:
        time.sleep(0.05)
    delivery = next(d for d in emulator.webhooks if d.job_id == run_id)
    assert set(delivery.body) == {"delayTime", "executionTime", "id", "input", "output", "status", "webhook"}
    assert delivery.body["status"] == "COMPLETED" and delivery.body["id"] == run_id and delivery.attempts == [200]
    assert delivery.body["output"]["final"]["key"] == final_key


def test_bad_input_fails_with_a_clear_code_and_the_worker_keeps_serving(aws_stack, emulator, client, receiver, tmp_path):
    storage = Storage()
    good = put_dataset(storage, OWNER, "ds_good", dataset_zip(count=4))
    evil = put_dataset(storage, OWNER, "ds_evil", dataset_zip(count=4, extra={"../../evil.txt": b"owned"}))
    receiver.blocked_paths["/forbidden.zip"] = 403

    def payload(job_id: str, **kwargs) -> dict:
        base = {"job_id": job_id, "owner": OWNER, "engine": Engine.DIFFUSERS, "dataset": good, "spec": tiny_sd_spec(steps=4),
                "callback_url": receiver.url, "secret": receiver.secret}
        base.update(kwargs)
        owner = base.pop("owner")
        return worker_input(storage, owner=owner, **base).model_dump(mode="json")

    missing = payload("job_missing")
    del missing["spec"], missing["dataset"]
    unknown_engine = payload("job_engine") | {"engine": "comfyui"}
    cases = {
        "INVALID_INPUT": missing,
        "UNKNOWN_ENGINE": unknown_engine,
        "DATASET_DOWNLOAD_FAILED": payload("job_403", dataset_url=receiver.base() + "/forbidden.zip"),
        "DATASET_DOWNLOAD_FAILED ": payload("job_404", dataset_url=storage.presigned_get(f"datasets/{OWNER}/nope/dataset.zip", 600)[0]),
        "DATASET_CHECKSUM_MISMATCH": payload("job_sha", dataset=type(good)(key=good.key, sha256="0" * 64, size=good.size)),
        "DATASET_UNSAFE": payload("job_evil", dataset=evil),
    }
    workers = set()
    for code, body in cases.items():
        # When a bad job is submitted
        status = poll(client, submit(client, body))
        # Then RunPod reports FAILED with the code, and the manifest still arrives as output
        assert status["status"] == "FAILED", (code, status)
        assert status["error"].startswith(code.strip() + ":"), (code, status["error"])
        assert status["output"]["status"] == "failed"
        workers.add(emulator.job(status["id"])["worker_id"])
    assert "owned" not in "".join(p.name for p in tmp_path.rglob("*"))

    # When the callback URL is down, training still runs to the end (events are best effort)
    down = payload("job_down", callback_url="http://127.0.0.1:9/v1/hooks/worker/job_down")
    status = poll(client, submit(client, down))
    assert status["status"] == "COMPLETED", status
    workers.add(emulator.job(status["id"])["worker_id"])

    # And one and the same worker process served every job
    assert len(workers) == 1 and emulator.worker_deaths == []


def test_cancel_while_training_stops_the_engine_group_and_keeps_the_last_complete_checkpoint(
        aws_stack, emulator, client, receiver, tmp_path):
    # Given a long tiny-sd job checkpointing every 5 steps
    storage = Storage()
    dataset = put_dataset(storage, OWNER, "ds_cancel", dataset_zip(count=8))
    inp = worker_input(storage, job_id="job_cancel", owner=OWNER, engine=Engine.DIFFUSERS, dataset=dataset,
                       spec=tiny_sd_spec(steps=1000, checkpoint_every=5, sample_every=1000), callback_url=receiver.url,
                       secret=receiver.secret)
    run_id = submit(client, inp.model_dump(mode="json"))
    pgid = engine_pgid("job_cancel")
    receiver.wait_for(lambda evs: sum(e["type"] == "checkpoint" for e in evs) >= 2, job_id="job_cancel", timeout=120)
    # (while it runs, RunPod's /status shows the progress the worker mirrors with progress_update)
    deadline = time.monotonic() + 10
    while "output" not in (running := client.get(f"/status/{run_id}").json()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running["status"] == "IN_PROGRESS" and running["output"]["total_steps"] == 1000 and running["output"]["step"] >= 1

    # When the job is cancelled through the endpoint API
    cancelled_at = time.monotonic()
    assert client.post(f"/cancel/{run_id}").json() == {"id": run_id, "status": "CANCELLED"}

    # Then the engine's whole process group is gone within 10 s
    while group_alive(pgid) and time.monotonic() - cancelled_at < 10:
        time.sleep(0.1)
    assert not group_alive(pgid)
    assert client.get(f"/status/{run_id}").json()["status"] == "CANCELLED"

    # And the worker reported `cancelled`; S3 holds only complete files, the last reported checkpoint among them
    events = receiver.wait_for(lambda evs: any(e["type"] == "cancelled" for e in evs), job_id="job_cancel", timeout=30)
    blobs = assert_nothing_half_written(storage, inp.output.prefix, tmp_path)
    assert not any("/final/" in k for k in blobs)
    reported = [e["data"] for e in events if e["type"] == "checkpoint" and e["data"]["kind"] == "checkpoint"]
    last = max(reported, key=lambda a: a["step"])
    assert hashlib.sha256(blobs[last["key"]]).hexdigest() == last["sha256"]
    assert "last checkpoint" in events[-1]["data"]["error"]["message"]


def test_hard_kill_of_a_worker_mid_job_fails_the_job_and_leaves_nothing_half_written(
        aws_stack, emulator, client, receiver, tmp_path):
    # Given a long job that has saved a checkpoint
    storage = Storage()
    dataset = put_dataset(storage, OWNER, "ds_kill", dataset_zip(count=8))
    inp = worker_input(storage, job_id="job_kill", owner=OWNER, engine=Engine.DIFFUSERS, dataset=dataset,
                       spec=tiny_sd_spec(steps=1000, checkpoint_every=3, sample_every=1000), callback_url=receiver.url,
                       secret=receiver.secret)
    run_id = submit(client, inp.model_dump(mode="json"))
    pgid = engine_pgid("job_kill")
    receiver.wait_for(lambda evs: any(e["type"] == "checkpoint" for e in evs), job_id="job_kill", timeout=120)

    # When its worker is killed (the container dies)
    emulator.fault(kill_worker_for_job=run_id)

    # Then RunPod reports FAILED, the engine died with it, and S3 holds only complete files
    status = poll(client, run_id, timeout=30)
    assert status["status"] == "FAILED" and "exited" in status["error"]
    deadline = time.monotonic() + 10
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(pgid)
    assert_nothing_half_written(storage, inp.output.prefix, tmp_path)

    # And a fresh worker takes its place
    emulator.wait_until_ready(120)
    assert len(emulator.workers) == 1


def test_zip_with_only_traversal_is_refused_before_any_file_is_written(tmp_path):
    # A guard for the archive used above: the entry really is a traversal entry
    data = dataset_zip(count=1, extra={"../../evil.txt": b"owned"})
    assert any(n.startswith("../") for n in zipfile.ZipFile(io.BytesIO(data)).namelist())
