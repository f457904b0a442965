"""The main job on the local stack, end to end, as a user drives it: HTTP, S3 and the CLI against `loraforge local up`.

One stack (one real worker, tiny-sd on CPU) serves every test in this module. Automatic retries are off
(MAX_AUTO_RETRIES=0) so a killed worker leaves the job failed for the user to retry.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraforge.local.aws_resources import RUNPOD_LOCAL_API_KEY
from loraforge.local.demo_dataset import DEMO_IMAGES, build_demo_dataset, zip_dataset

from .conftest import StackHandle

pytestmark = pytest.mark.slow


def dataset_folder(tmp_path: Path, name: str, *, config: str | None = None, count: int = 6) -> Path:
    folder = build_demo_dataset(tmp_path / name, images=DEMO_IMAGES[:count], with_config=False)
    if config is not None:
        (folder / "loraforge.yaml").write_text(config)
    return folder


@pytest.fixture(scope="module")
def ready_dataset(local_stack: StackHandle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One dataset uploaded through the CLI (`datasets upload DIR`), shared by the API-flow tests."""
    folder = dataset_folder(tmp_path_factory.mktemp("ds"), "faces")
    result = local_stack.cli("datasets", "upload", str(folder), "--json", check=True)
    dataset = json.loads(result.stdout)
    assert dataset["status"] == "ready", dataset
    return dataset


def create_job(stack: StackHandle, dataset_id: str, *, user: str = "alice", **body: Any) -> dict[str, Any]:
    response = stack.api(user).post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "tiny-sd", **body})
    assert response.status_code == 201, response.text
    return response.json()


def artifacts(stack: StackHandle, job_id: str, user: str = "alice") -> list[dict[str, Any]]:
    response = stack.api(user).get(f"/v1/jobs/{job_id}/artifacts")
    response.raise_for_status()
    return response.json()["items"]


def emulator_fault(stack: StackHandle, **fault: Any) -> None:
    httpx.post(f"{stack.runpod_root}/_emulator/fault", json=fault, timeout=10).raise_for_status()


def runpod_health(stack: StackHandle) -> dict[str, Any]:
    response = httpx.get(f"{stack.info['runpod_url']}/local-cpu/health", headers={"authorization": RUNPOD_LOCAL_API_KEY}, timeout=10)
    response.raise_for_status()
    return response.json()


def load_lora_into_tiny_sd(path: Path) -> tuple[int, int]:
    """Loads the LoRA with diffusers' `load_lora_weights` into a fresh tiny-sd pipeline; (tensors loaded, tensors in the file)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    from loraforge.presets import get_preset
    from loraforge_worker.engines.tiny_sd import ensure_tiny_sd

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(ensure_tiny_sd(get_preset("tiny-sd").engine_options.get("tiny_model")))
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="e2e")
    loaded = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet, adapter_name="e2e"))
    trained = load_file(str(path))
    assert all(torch.equal(loaded[key], trained[f"unet.{key}"]) for key in loaded)
    return len(loaded), len(trained)


def test_api_flow_dataset_to_a_lora_that_loads(local_stack: StackHandle, ready_dataset: dict[str, Any], tmp_path: Path) -> None:
    # Given a ready dataset uploaded with the CLI
    # When a job is created over HTTP and followed with the CLI
    job = create_job(local_stack, ready_dataset["id"], trigger_word="zxq", hyperparameters={"steps": 20}, checkpoints={"every": 10})
    assert job["status"] == "queued" and job["hyperparameters"]["steps"] == 20
    watched = local_stack.cli("jobs", "watch", job["id"], "--json", "--interval", "0.3", timeout=300)
    final = json.loads(watched.stdout)

    # Then it succeeded with every step, checkpoints and a final LoRA
    assert watched.returncode == 0, watched.stderr + local_stack.log_tail()
    assert final["job"]["status"] == "succeeded"
    assert final["job"]["progress"]["step"] == final["job"]["progress"]["total_steps"] == 20
    kinds = {a["kind"] for a in final["artifacts"]}
    assert {"final", "checkpoint"} <= kinds
    assert all(a["key"].startswith(f"jobs/alice/{job['id']}/") for a in final["artifacts"])

    # And the downloaded LoRA (sha256 checked by the CLI) loads into a fresh pipeline with the trained tensors
    downloaded = local_stack.cli("jobs", "download", job["id"], "-o", str(tmp_path), "--json", check=True)
    (file,) = json.loads(downloaded.stdout)["files"]
    loaded, in_file = load_lora_into_tiny_sd(Path(file["path"]))
    assert loaded == in_file > 0


def test_drop_to_train_starts_exactly_one_job_that_succeeds(local_stack: StackHandle, tmp_path: Path) -> None:
    # Given a zip with captioned images and a loraforge.yaml
    folder = dataset_folder(tmp_path, "dropset", config="preset: tiny-sd\nname: dropped\ntrigger_word: zxq\nhyperparameters:\n  steps: 10\n")
    archive = zip_dataset(folder, tmp_path / "dropset.zip")

    # When it is dropped under incoming/<owner>/ and followed
    result = local_stack.cli("drop", str(archive), "--watch", "--json", "--interval", "0.3", timeout=300)

    # Then the dataset it created has exactly one job, and that job succeeded with the yaml's options
    assert result.returncode == 0, result.stdout + result.stderr + local_stack.log_tail()
    job = json.loads(result.stdout)["job"]
    assert job["status"] == "succeeded" and job["name"] == "dropped" and job["progress"]["total_steps"] == 10
    datasets = [d for d in local_stack.api().get("/v1/datasets").json()["items"] if d.get("source_key") == "incoming/alice/dropset.zip"]
    assert len(datasets) == 1 and datasets[0]["job_id"] == job["id"]
    jobs = [j for j in local_stack.api().get("/v1/jobs", params={"limit": 100}).json()["items"] if j["dataset_id"] == datasets[0]["id"]]
    assert [j["id"] for j in jobs] == [job["id"]]


def test_cancel_during_training(local_stack: StackHandle, ready_dataset: dict[str, Any]) -> None:
    # Given a long job that is training
    job = create_job(local_stack, ready_dataset["id"], hyperparameters={"steps": 1000}, checkpoints={"every": 500})
    local_stack.wait_job(job["id"], lambda j: j["status"] == "running" and j["progress"]["step"] >= 1, timeout=180)

    # When it is cancelled with the CLI
    cancel = local_stack.cli("jobs", "cancel", job["id"], "--json", check=True)

    # Then it ends cancelled long before its 1000 steps, and the worker is free again
    assert json.loads(cancel.stdout)["status"] in ("cancelling", "cancelled")
    ended = local_stack.wait_job(job["id"], timeout=90)
    assert ended["status"] == "cancelled", ended
    assert ended["progress"]["step"] < 1000
    deadline = time.monotonic() + 30
    while runpod_health(local_stack)["jobs"]["inProgress"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert runpod_health(local_stack)["jobs"]["inProgress"] == 0


def test_retry_after_a_killed_worker_resumes_from_the_last_checkpoint(local_stack: StackHandle, ready_dataset: dict[str, Any]) -> None:
    # Given a job that has stored at least two checkpoints and has most of its steps still to run
    job = create_job(local_stack, ready_dataset["id"], hyperparameters={"steps": 120}, checkpoints={"every": 10})
    deadline = time.monotonic() + 180
    while max([a["step"] for a in artifacts(local_stack, job["id"]) if a["kind"] == "checkpoint"], default=0) < 20:
        assert time.monotonic() < deadline, local_stack.job(job["id"])
        time.sleep(0.2)
    running = local_stack.job(job["id"])
    assert running["status"] == "running", running

    # When its worker dies (the container is killed) the job fails, and the user retries it
    emulator_fault(local_stack, kill_worker_for_job=running["runpod_job_id"])
    failed = local_stack.wait_job(job["id"], timeout=90)
    assert failed["status"] == "failed" and failed["error"]["kind"] == "system", failed
    checkpoint_step = max(a["step"] for a in artifacts(local_stack, job["id"]) if a["kind"] == "checkpoint")
    retried = json.loads(local_stack.cli("jobs", "retry", job["id"], "--json", check=True).stdout)

    # Then the new attempt starts from the newest checkpoint, continues the step count and succeeds
    assert retried["retry_of"] == job["id"] and retried["resume_from"]["step"] == checkpoint_step
    done = local_stack.wait_job(retried["id"], timeout=240)
    assert done["status"] == "succeeded", done
    assert done["progress"]["step"] == done["progress"]["total_steps"] == 120
    progress_steps = [e["data"]["step"] for e in local_stack.events(retried["id"]) if e["type"] == "progress" and "step" in e["data"]]
    metrics = local_stack.api().get(f"/v1/jobs/{retried['id']}/metrics").json()["items"]
    first_step = min([*progress_steps, *(m["step"] for m in metrics)])
    assert first_step > checkpoint_step
    final = next(a for a in artifacts(local_stack, retried["id"]) if a["kind"] == "final")
    assert final["step"] == 120


def test_two_owners_are_isolated(local_stack: StackHandle, ready_dataset: dict[str, Any]) -> None:
    # Given alice's dataset and a job of hers
    job = create_job(local_stack, ready_dataset["id"], hyperparameters={"steps": 5})
    bob = local_stack.api("bob")

    # Then bob gets 404 for each of them, never sees them in his lists, and cannot act on them
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/artifacts", f"/v1/jobs/{job['id']}/events", f"/v1/datasets/{ready_dataset['id']}"):
        assert bob.get(path).status_code == 404, path
    assert bob.post(f"/v1/jobs/{job['id']}/cancel", json={}).status_code == 404
    borrowed = bob.post("/v1/jobs", json={"dataset_id": ready_dataset["id"], "preset": "tiny-sd"})
    assert borrowed.status_code == 404 and borrowed.json()["error"]["code"] == "DATASET_NOT_FOUND"
    assert job["id"] not in {j["id"] for j in bob.get("/v1/jobs").json()["items"]}
    assert ready_dataset["id"] not in {d["id"] for d in bob.get("/v1/datasets").json()["items"]}
    shown = local_stack.cli("jobs", "show", job["id"], user="bob")
    assert shown.returncode == 1 and "NOT_FOUND" in shown.stderr and "Traceback" not in shown.stderr
    # and without a token the API Gateway authorizer answers before any function runs
    assert httpx.get(f"{local_stack.info['api_url']}/v1/jobs", timeout=10).status_code == 401
    local_stack.wait_job(job["id"], timeout=180)


def queue_url(stack: StackHandle, prefix: str) -> str:
    (url,) = stack.aws("sqs").list_queues(QueueNamePrefix=prefix)["QueueUrls"]
    return url


def queue_is_drained(stack: StackHandle, url: str) -> bool:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = stack.aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return all(attributes[name] == "0" for name in names)


def test_duplicate_s3_event_and_dropped_webhook_end_in_one_terminal_state(local_stack: StackHandle, tmp_path: Path) -> None:
    # Given RunPod will not deliver the next completion webhook, and an observer rule that copies S3's events for one key
    emulator_fault(local_stack, drop_webhooks=1)
    key = "incoming/alice/dupset.zip"
    sqs, events = local_stack.aws("sqs"), local_stack.aws("events")
    observer = sqs.create_queue(QueueName="e2e-s3-observer")["QueueUrl"]
    observer_arn = sqs.get_queue_attributes(QueueUrl=observer, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="e2e-s3-observer", EventPattern=json.dumps({"source": ["aws.s3"], "detail": {"object": {"key": [key]}}}))
    events.put_targets(Rule="e2e-s3-observer", Targets=[{"Id": "observer", "Arn": observer_arn}])
    folder = dataset_folder(tmp_path, "dupset", config="preset: tiny-sd\nhyperparameters:\n  steps: 5\n")
    archive = zip_dataset(folder, tmp_path / "dupset.zip")

    # When the zip is dropped and EventBridge delivers S3's "Object Created" event to ingest a second time
    local_stack.s3().upload_file(str(archive), local_stack.info["bucket"], key)
    (original,) = sqs.receive_message(QueueUrl=observer, WaitTimeSeconds=10)["Messages"]
    assert json.loads(original["Body"])["detail-type"] == "Object Created"
    ingest_queue = queue_url(local_stack, "loraforge-local-IngestFunction")
    sqs.send_message(QueueUrl=ingest_queue, MessageBody=original["Body"])

    # Then the duplicate was consumed without an error (nothing dead-lettered), there is one dataset and one job for
    # the key, and the job still reaches exactly one terminal state
    deadline = time.monotonic() + 120
    while True:
        datasets = [d for d in local_stack.api().get("/v1/datasets").json()["items"] if d.get("source_key") == key]
        if datasets and datasets[0].get("job_id") and queue_is_drained(local_stack, ingest_queue) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert queue_is_drained(local_stack, ingest_queue)
    assert sqs.receive_message(QueueUrl=queue_url(local_stack, "loraforge-local-IngestDLQ")).get("Messages") is None
    assert len(datasets) == 1 and datasets[0]["job_id"], datasets
    job = local_stack.wait_job(datasets[0]["job_id"], timeout=240)
    assert job["status"] == "succeeded", job
    time.sleep(3)  # let the reconciler run past the end
    jobs = [j for j in local_stack.api().get("/v1/jobs", params={"limit": 100}).json()["items"] if j["dataset_id"] == datasets[0]["id"]]
    assert [j["id"] for j in jobs] == [job["id"]]
    terminal_events = [e for e in local_stack.events(job["id"]) if e["type"] in ("completed", "failed", "cancelled")]
    assert [e["type"] for e in terminal_events] == ["completed"]
    assert terminal_events[0]["data"]["source"] != "runpod_webhook"
    assert local_stack.job(job["id"])["status"] == "succeeded"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install -y tmux): the moving-bar check needs a terminal")
def test_jobs_watch_draws_a_moving_bar_in_a_terminal(local_stack: StackHandle, ready_dataset: dict[str, Any]) -> None:
    # Given a job and `loraforge jobs watch` running in a real terminal (tmux)
    job = create_job(local_stack, ready_dataset["id"], hyperparameters={"steps": 60}, checkpoints={"every": 30})
    socket = f"loraforge-e2e-{os.getpid()}"  # a private tmux server: it inherits this environment
    watch = shlex.join(local_stack.cli_command("jobs", "watch", job["id"], "--interval", "0.2"))
    tmux = ["tmux", "-L", socket]
    subprocess.run([*tmux, "new-session", "-d", "-s", "watch", "-x", "160", "-y", "60", f"{watch}; echo EXIT=$?; sleep 120"], check=True,
                   env=local_stack.env, cwd=local_stack.workdir)
    bars: list[str] = []
    pane = ""
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            pane = subprocess.run([*tmux, "capture-pane", "-p", "-S", "-200", "-t", "watch"], capture_output=True, text=True).stdout
            bar = next((line.strip() for line in pane.splitlines() if "/60" in line and "[" in line), None)
            if bar and (not bars or bars[-1] != bar):
                bars.append(bar)
            if "EXIT=" in pane:
                break
            time.sleep(0.25)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)

    # Then the bar redrew in place through increasing steps and the artifact list followed it
    steps = [int(bar.split("/60")[0].split()[-1]) for bar in bars]
    assert len(set(steps)) >= 3, bars
    assert steps == sorted(steps)
    assert any(bar.startswith("running") for bar in bars)
    assert "EXIT=0" in pane and "KIND" in pane and "final" in pane, pane
    assert sum("/60" in line and "[" in line for line in pane.splitlines()) == 1, "the bar is redrawn on one line"

