"""The result of a finished run names every file of its LoRA (Wan 2.2 14B: one per expert) and says where a resumed
attempt's trainer really started; a single-file result is what it always was plus `files`."""

from __future__ import annotations

from typing import Any

from loraforge.contract import WorkerResult
from loraforge.logic.run_outcome import outcome_from_result
from loraforge.models import Artifact, ArtifactKind, Job, JobStatus, utcnow
from loraforge.models.job import ResumeReport
from loraforge.presets import get_preset

OWNER, JOB_ID = "u", "job_00000000000000000001"
PREFIX = f"jobs/{OWNER}/{JOB_ID}/"


class RecordingTable:
    """Records the artifacts an outcome writes; lists them back like JobsTable."""

    def __init__(self) -> None:
        self.artifacts: dict[str, Artifact] = {}

    def put_artifact(self, job_id: str, artifact: Artifact) -> None:
        self.artifacts[artifact.key] = artifact

    def list_artifacts(self, job_id: str, kind: ArtifactKind | None = None) -> list[Artifact]:
        return [a for a in self.artifacts.values() if kind is None or a.kind == kind]


def running_job(preset: str) -> Job:
    p = get_preset(preset)
    now = utcnow()
    return Job(id=JOB_ID, owner=OWNER, status=JobStatus.RUNNING, preset=p.id, dataset_id="ds_x", hyperparameters=p.defaults,
               created_at=now, updated_at=now, runpod_job_id="rp-1")


def final(name: str, step: int = 6, size: int = 100) -> Artifact:
    return Artifact(kind=ArtifactKind.FINAL, step=step, key=f"{PREFIX}final/{name}", size=size, sha256="a" * 64, name=name)


def completed(first: Artifact, artifacts: list[Artifact], **fields: Any) -> WorkerResult:
    return WorkerResult(job_id=JOB_ID, attempt=1, status="completed", steps=6, total_steps=6, final_loss=0.1, final=first,
                        artifacts=artifacts, **fields)


def test_a_split_final_names_both_expert_files_in_the_result() -> None:
    # Given a Wan 2.2 14B run whose manifest lists both final files (and a checkpoint), `final` being the high-noise one
    high, low = final(f"{JOB_ID}_high_noise.safetensors", size=10), final(f"{JOB_ID}_low_noise.safetensors", size=20)
    checkpoint = Artifact(kind=ArtifactKind.CHECKPOINT, step=4, key=f"{PREFIX}checkpoints/c.safetensors", size=1, sha256="b" * 64)
    table = RecordingTable()

    # When the result is turned into the job's outcome
    outcome = outcome_from_result(table, running_job("wan22-14b"), completed(high, [checkpoint, low, high]),  # type: ignore[arg-type]
                                  source="runpod_webhook", runpod_job_id="rp-1")

    # Then the result lists both files, in name order with their experts, and `lora` stays the high-noise file
    assert outcome.status == "succeeded" and outcome.result is not None
    files = outcome.result.files
    assert [(f.key, f.size, f.part, f.kind) for f in files] == [(high.key, 10, "high_noise", ArtifactKind.FINAL),
                                                                (low.key, 20, "low_noise", ArtifactKind.FINAL)]
    assert outcome.result.lora == high
    assert set(table.artifacts) == {high.key, low.key, checkpoint.key}


def test_a_single_file_result_is_as_before_plus_its_one_file() -> None:
    # Given a tiny-sd run with one final file
    lora = final(f"{JOB_ID}.safetensors")

    # When the result becomes the outcome
    outcome = outcome_from_result(RecordingTable(), running_job("tiny-sd"), completed(lora, [lora]),  # type: ignore[arg-type]
                                  source="worker_event", runpod_job_id="rp-1")

    # Then `lora`, `steps` and `final_loss` are what they always were, `files` is that file without a part, no resume is claimed
    assert outcome.result is not None
    dumped = outcome.result.model_dump(mode="json")
    assert dumped["lora"] == lora.model_dump(mode="json") and dumped["steps"] == 6 and dumped["final_loss"] == 0.1
    assert dumped["files"] == [lora.model_dump(mode="json") | {"part": None}]
    assert dumped["resume"] is None


def test_a_manifest_without_its_final_falls_back_on_every_recorded_final_file() -> None:
    # Given both final files already recorded, and a manifest whose `final` lies outside the job's prefix
    table = RecordingTable()
    for name in (f"{JOB_ID}_low_noise.safetensors", f"{JOB_ID}_high_noise.safetensors"):
        table.put_artifact(JOB_ID, final(name))
    stray = Artifact(kind=ArtifactKind.FINAL, step=6, key="jobs/other/job_x/final/x.safetensors", size=1, sha256="c" * 64)

    # When the result becomes the outcome
    outcome = outcome_from_result(table, running_job("wan22-14b"), completed(stray, [stray]),  # type: ignore[arg-type]
                                  source="runpod_webhook", runpod_job_id="rp-1")

    # Then the result is made of the recorded files, both of them
    assert outcome.result is not None
    assert [f.part for f in outcome.result.files] == ["high_noise", "low_noise"]


def test_the_result_says_where_a_resumed_trainer_really_started() -> None:
    # Given a resumed attempt whose worker reports that the trainer started from step 0 instead of the checkpoint's step 4
    lora = final(f"{JOB_ID}.safetensors")
    report = ResumeReport(requested_step=4, started_step=0, honoured=False)

    # When the result becomes the outcome
    outcome = outcome_from_result(RecordingTable(), running_job("tiny-sd"), completed(lora, [lora], resume=report),  # type: ignore[arg-type]
                                  source="worker_event", runpod_job_id="rp-1")

    # Then the job's result carries that report
    assert outcome.result is not None and outcome.result.resume == report
