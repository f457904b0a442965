"""The job's result names EVERY file of its LoRA, through the real control plane and API: a Wan 2.2 14B LoRA is two files
(one per expert) and a user who downloads only `result.lora` gets half of it. Single-file presets keep the result they
had, plus the additive `files` list."""

from __future__ import annotations

import hashlib

import httpx

from loraforge.contract import WorkerResult
from loraforge.logic.cancel_job import cancel_job
from loraforge.models import Artifact, ArtifactKind, Job, JobStatus
from tests.integration.dispatch.helpers import ControlPlane, stored_artifact
from tests.support.apigw import call_api

PARTS = ("high_noise", "low_noise")


def split_finals(job: Job) -> list[Artifact]:
    return [stored_artifact(job, ArtifactKind.FINAL, f"{job.id}_{part}.safetensors", job.hyperparameters.steps) for part in PARTS]


def complete_on_runpod(plane: ControlPlane, job: Job, finals: list[Artifact]) -> None:
    """RunPod completes the run with the worker's manifest: `final` is the first file, `artifacts` lists every one."""
    total = job.hyperparameters.steps
    output = WorkerResult(job_id=job.id, attempt=job.attempts, status="completed", steps=total, total_steps=total, final_loss=0.07,
                          final=finals[0], artifacts=finals).model_dump(mode="json")
    plane.runpod.complete(job.runpod_job_id or "", output)
    assert plane.runpod_webhook(job.id, plane.runpod.webhook_body(job.runpod_job_id or "")).status == 200


def test_a_wan22_result_names_both_expert_files_and_the_api_lists_them_with_download_links(plane: ControlPlane) -> None:
    # Given a running Wan 2.2 14B job whose worker uploaded its final LoRA as two files
    job = plane.running_job(preset="wan22-14b", steps=1000)
    finals = split_finals(job)

    # When RunPod reports the run completed with the worker's manifest
    complete_on_runpod(plane, job, finals)

    # Then the job's result names both files, each with its expert, and `lora` is still the first (high-noise) file
    view = call_api(plane.context, "GET", f"/v1/jobs/{job.id}", owner=job.owner)
    assert view.status == 200 and view.json["status"] == "succeeded"
    result = view.json["result"]
    assert [(f["name"], f["part"]) for f in result["files"]] == [(f"{job.id}_{part}.safetensors", part) for part in PARTS]
    assert [(f["key"], f["size"], f["sha256"]) for f in result["files"]] == [(a.key, a.size, a.sha256) for a in finals]
    assert result["lora"]["key"] == finals[0].key and result["steps"] == 1000
    # And the artifacts route presigns every file of the result, serving exactly the stored bytes
    links = call_api(plane.context, "GET", f"/v1/jobs/{job.id}/artifacts", owner=job.owner, query={"kind": "final"}).json["items"]
    by_key = {link["key"]: link for link in links}
    assert set(by_key) == {f["key"] for f in result["files"]}
    for file in result["files"]:
        assert hashlib.sha256(httpx.get(by_key[file["key"]]["url"]).content).hexdigest() == file["sha256"]


def test_a_single_file_result_is_unchanged_but_for_the_files_list(plane: ControlPlane) -> None:
    # Given a running tiny-sd job
    job = plane.running_job(preset="tiny-sd", steps=30)

    # When RunPod completes it with the usual one-file manifest
    assert plane.runpod_webhook(job.id, plane.finish_on_runpod(job.id)).status == 200

    # Then `lora` is the one final file as before, `files` lists that same file with no part, and nothing claims a resume
    result = call_api(plane.context, "GET", f"/v1/jobs/{job.id}", owner=job.owner).json["result"]
    assert set(result) == {"lora", "files", "steps", "final_loss", "resume"}
    assert result["lora"]["key"].endswith("/final/ohwx.safetensors") and result["steps"] == 30 and result["final_loss"] == 0.08
    assert result["files"] == [result["lora"] | {"part": None}]
    assert result["resume"] is None


def test_keep_latest_on_a_wan22_job_keeps_both_files_of_the_newest_checkpoint(plane: ControlPlane) -> None:
    # Given a running Wan 2.2 14B job that stored both expert files of its step-250 checkpoint
    job = plane.running_job(preset="wan22-14b", steps=1000)
    seq = 2
    for part in reversed(PARTS):
        checkpoint = stored_artifact(job, ArtifactKind.CHECKPOINT, f"{job.id}_000000250_{part}.safetensors", 250)
        assert plane.worker_event(job.id, "checkpoint", seq, checkpoint.model_dump(mode="json")).status == 200
        seq += 1

    # When its owner cancels it keeping the latest checkpoint, and the worker confirms
    cancel_job(job.owner, job.id, keep_latest=True)
    plane.worker_event(job.id, "cancelled", seq, plane.result(job, status="cancelled"))

    # Then the result is that checkpoint: both files, each with its expert
    done = plane.job(job.id)
    assert done.status == JobStatus.CANCELLED and done.result is not None
    assert [(f.name, f.part, f.step) for f in done.result.files] == [(f"{job.id}_000000250_{part}.safetensors", part, 250) for part in PARTS]
    assert done.result.lora is not None and done.result.lora.name == f"{job.id}_000000250_high_noise.safetensors"
