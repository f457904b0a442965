"""The resume part of the worker contract: every file of a checkpoint (Wan 2.2 14B: one per expert), and inputs queued
under contract 1 (one `checkpoint_url`) still accepted."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loraforge.contract import CONTRACT_VERSION, CheckpointFile, ResumeFrom, WorkerErrorCode, checkpoint_part
from loraforge_worker.errors import WorkerFailure
from loraforge_worker.pipeline import parse_input
from tests.integration.worker.helpers import tiny_sd_spec

SHA = "ab" * 32


def raw_input(resume: dict) -> dict:
    return {
        "contract_version": 1, "job_id": "job_1", "attempt": 2, "dispatch_token": "tok", "engine": "ai-toolkit",
        "spec": tiny_sd_spec().model_dump(mode="json"),
        "dataset": {"url": "https://s3.test/ds.zip"},
        "output": {"url": "https://s3.test/", "fields": {}, "prefix": "jobs/u/job_1/", "max_bytes": 1024},
        "resume": resume, "time_limit_seconds": 600,
    }


def test_an_input_queued_under_contract_1_resumes_from_its_one_file():
    # Given a RunPod input written by a control plane older than `resume.files`
    raw = raw_input({"step": 40, "checkpoint_url": "https://s3.test/a", "checkpoint_name": "job_1_000000040.safetensors",
                     "checkpoint_sha256": SHA, "optimizer_url": "https://s3.test/o"})

    # When the worker reads it
    inp = parse_input(raw)

    # Then the resume is that one file, with its checksum
    assert inp.resume is not None and inp.resume.step == 40
    assert inp.resume.files == [CheckpointFile(url="https://s3.test/a", name="job_1_000000040.safetensors", sha256=SHA)]
    assert inp.resume.optimizer_url == "https://s3.test/o"


def test_a_split_checkpoint_carries_both_files_and_mirrors_the_first_for_older_workers():
    # Given a resume of both experts of step 500
    resume = ResumeFrom(step=500, files=[
        CheckpointFile(url="https://s3.test/h", name="r_000000500_high_noise.safetensors", sha256=SHA, size=10),
        CheckpointFile(url="https://s3.test/l", name="r_000000500_low_noise.safetensors", sha256="cd" * 32, size=11),
    ])

    # When it is sent as JSON and read back
    dumped = resume.model_dump(mode="json")
    read = ResumeFrom.model_validate(dumped)

    # Then both files survive, and the contract-1 fields name the first (what an older worker restores)
    assert read == resume and [f["name"] for f in dumped["files"]] == ["r_000000500_high_noise.safetensors", "r_000000500_low_noise.safetensors"]
    assert (dumped["checkpoint_url"], dumped["checkpoint_name"], dumped["checkpoint_sha256"]) == ("https://s3.test/h",
                                                                                                "r_000000500_high_noise.safetensors", SHA)
    assert CONTRACT_VERSION == 2


@pytest.mark.parametrize(("names", "problem"), [
    (["r_000000500_high_noise.safetensors", "r_000000500_high_noise.safetensors"], "one file per part"),
    (["r_000000500.safetensors", "r_000000500_low_noise.safetensors"], "one file per part"),
    (["../r_000000500.safetensors"], "pattern"),
])
def test_a_resume_that_cannot_be_one_checkpoint_is_refused(names, problem):
    # Given files that are not one checkpoint (two of one part, a single file mixed with a part, or not a plain .safetensors name)
    files = [{"url": f"https://s3.test/{i}", "name": name} for i, name in enumerate(names)]

    # When the input is validated
    with pytest.raises(ValidationError) as refused:
        ResumeFrom.model_validate({"step": 500, "files": files})

    # Then it is refused with the reason
    assert problem in str(refused.value)


def test_the_worker_answers_invalid_input_to_a_resume_without_files():
    # Given a resume with neither `files` nor a contract-1 checkpoint URL
    raw = raw_input({"step": 40, "files": []})

    # When the worker reads it
    with pytest.raises(WorkerFailure) as refused:
        parse_input(raw)

    # Then it fails as INVALID_INPUT, naming the field
    assert refused.value.code == WorkerErrorCode.INVALID_INPUT and "resume.files" in refused.value.message


@pytest.mark.parametrize(("name", "part"), [
    ("job_a_000000250_high_noise.safetensors", "_high_noise"),
    ("jobs/u/job_a/checkpoints/job_a_000000250_low_noise.safetensors", "_low_noise"),
    ("job_a_000000250.safetensors", ""),
    ("job_a_high_noise_000000250.safetensors", ""),
])
def test_the_part_of_a_checkpoint_file_comes_from_its_name_suffix(name, part):
    assert checkpoint_part(name) == part
