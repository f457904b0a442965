"""Which stored checkpoint a retry resumes from, when one checkpoint step is several files (Wan 2.2 14B: one LoRA per
expert), and what the worker input then carries: every file of that step, each presigned."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from loraforge.logic.checkpoints import checkpoint_sets, newest_checkpoint, prune_checkpoints
from loraforge.logic.worker_input import resume_input
from loraforge.models import Artifact, ArtifactKind, Job, JobStatus, utcnow
from loraforge.models.event import EventType
from loraforge.models.job import CheckpointOptions
from loraforge.presets import get_preset

OWNER = "alice"


def wan_job(job_id: str = "job_0wan00000000000001", **changes: object) -> Job:
    preset = get_preset("wan22-14b")
    now = utcnow()
    job = Job(id=job_id, owner=OWNER, status=JobStatus.FAILED, preset=preset.id, dataset_id="ds_x", hyperparameters=preset.defaults,
              created_at=now, updated_at=now)
    return job.model_copy(update=changes)


def artifact(job: Job, step: int, part: str = "", kind: ArtifactKind = ArtifactKind.CHECKPOINT) -> Artifact:
    name = f"optimizer_{step:09d}.pt" if kind == ArtifactKind.OPTIMIZER else f"{job.id}_{step:09d}{part}.safetensors"
    key = f"jobs/{OWNER}/{job.id}/checkpoints/{name}"
    return Artifact(kind=kind, step=step, key=key, size=100 + step, sha256=hashlib.sha256(key.encode()).hexdigest(), name=name,
                    created_at=utcnow() + timedelta(seconds=step))


def pair(job: Job, step: int) -> list[Artifact]:
    return [artifact(job, step, "_low_noise"), artifact(job, step, "_high_noise")]  # reported in either order


class ArtifactTable:
    """The two JobsTable calls checkpoint selection and pruning make, over a list of artifact records."""

    def __init__(self, artifacts: list[Artifact]) -> None:
        self.artifacts = list(artifacts)
        self.events: list[tuple[EventType, dict]] = []

    def list_artifacts(self, job_id: str, kind: ArtifactKind) -> list[Artifact]:
        return [a for a in self.artifacts if a.kind == kind]

    def delete_artifact(self, job_id: str, artifact: Artifact) -> None:
        self.artifacts.remove(artifact)

    def append_event(self, job_id: str, type_: EventType, data: dict) -> None:
        self.events.append((type_, data))


class PresigningStorage:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    def presigned_get(self, key: str, ttl: int) -> tuple[str, object]:
        return f"https://bucket.s3.test/{key}?X-Amz-Expires={ttl}&X-Amz-Signature=sig", None

    def delete(self, key: str) -> None:
        self.deleted.append(key)


def retried(job: Job, table: ArtifactTable) -> Job:
    """The fields retry_job and the automatic retry set from the selected checkpoint."""
    stored = newest_checkpoint(table, job)  # type: ignore[arg-type]
    assert stored is not None
    return job.model_copy(update={"attempts": 2, "resume_from": stored.checkpoint, "resume_optimizer": stored.optimizer,
                                  "resume_files": list(stored.files)})


def test_a_wan22_job_retried_after_two_checkpoints_resumes_from_both_files_of_the_latest_step():
    # Given a Wan 2.2 job that stored two split checkpoints (250 and 500), each with its optimizer state
    job = wan_job()
    table = ArtifactTable([*pair(job, 250), artifact(job, 250, kind=ArtifactKind.OPTIMIZER),
                           *pair(job, 500), artifact(job, 500, kind=ArtifactKind.OPTIMIZER)])

    # When it is retried and its worker input's resume is built
    again = retried(job, table)
    resume = resume_input(again, PresigningStorage(), 900)  # type: ignore[arg-type]

    # Then the resume carries both expert files of step 500, each with its own presigned URL, sha256 and size
    assert resume.step == 500
    assert [f.name for f in resume.files] == [f"{job.id}_000000500_high_noise.safetensors", f"{job.id}_000000500_low_noise.safetensors"]
    for file, stored in zip(resume.files, again.resume_files, strict=True):
        assert file.url.startswith(f"https://bucket.s3.test/{stored.key}?") and "X-Amz-Signature" in file.url
        assert (file.sha256, file.size) == (stored.sha256, stored.size)
    assert resume.optimizer_url is not None and "optimizer_000000500.pt" in resume.optimizer_url
    # and a worker older than `files` still finds its one checkpoint in the fields it knows
    assert resume.checkpoint_url == resume.files[0].url and resume.checkpoint_name == resume.files[0].name


def test_a_newest_step_missing_an_expert_file_is_never_resumed_from():
    # Given a Wan 2.2 job whose step-750 save reached S3 with only its high-noise file
    job = wan_job()
    table = ArtifactTable([*pair(job, 250), *pair(job, 500), artifact(job, 500, kind=ArtifactKind.OPTIMIZER),
                           artifact(job, 750, "_high_noise"), artifact(job, 750, kind=ArtifactKind.OPTIMIZER)])

    # When the checkpoint to resume from is chosen
    stored = newest_checkpoint(table, job)  # type: ignore[arg-type]

    # Then it is the newest complete one (500, both experts) with the optimizer state of step 500, not 750's
    assert stored is not None and stored.step == 500
    assert [a.name for a in stored.files] == [f"{job.id}_000000500_high_noise.safetensors", f"{job.id}_000000500_low_noise.safetensors"]
    assert stored.optimizer is not None and stored.optimizer.step == 500


def test_a_retry_that_saved_only_half_a_checkpoint_falls_back_to_the_one_it_started_from():
    # Given a retried Wan 2.2 job that resumed from a pair at step 500 and then stored only one file of step 750
    parent = wan_job("job_0parent00000000001")
    started_from = pair(parent, 500)
    job = wan_job(resume_from=sorted(started_from, key=lambda a: a.name or "")[0], resume_files=sorted(started_from, key=lambda a: a.name or ""))
    table = ArtifactTable([artifact(job, 750, "_low_noise")])

    # When it is retried again
    stored = newest_checkpoint(table, job)  # type: ignore[arg-type]

    # Then it resumes from the pair it started from, both files
    assert stored is not None and stored.step == 500 and {a.key for a in stored.files} == {a.key for a in started_from}


def test_single_file_checkpoints_are_chosen_exactly_as_before():
    # Given an SD 1.5 job with single-file checkpoints at 10 and 20
    job = wan_job(preset="sd15")
    ten, twenty = artifact(job, 10), artifact(job, 20)
    table = ArtifactTable([twenty, ten, artifact(job, 20, kind=ArtifactKind.OPTIMIZER)])

    # When it is retried
    again = retried(job, table)
    resume = resume_input(again, PresigningStorage(), 900)  # type: ignore[arg-type]

    # Then it resumes from the one file of step 20
    assert again.resume_from == twenty and again.resume_files == [twenty]
    assert resume.step == 20 and [f.name for f in resume.files] == [twenty.name] and resume.checkpoint_sha256 == twenty.sha256


def test_a_job_queued_before_resume_files_existed_resumes_from_its_one_recorded_file():
    # Given a queued retry written before `resume_files` (only resume_from is set)
    job = wan_job(status=JobStatus.QUEUED, attempts=2, resume_from=artifact(wan_job(), 40))
    assert job.resume_files == []

    # When its worker input is built
    resume = resume_input(job, PresigningStorage(), 900)  # type: ignore[arg-type]

    # Then the resume names that one file, as contract 1 did
    assert resume.step == 40 and [f.name for f in resume.files] == [job.resume_from.name]  # type: ignore[union-attr]


def test_checkpoint_files_are_grouped_by_step_in_name_order():
    # Given split files reported out of order, one of them twice (a duplicate event)
    job = wan_job()
    low = artifact(job, 250, "_low_noise")
    records = [low, artifact(job, 500, "_high_noise"), artifact(job, 250, "_high_noise"), low]

    # When grouped
    sets = checkpoint_sets(records)

    # Then each step is one checkpoint, high-noise first, with no file twice
    assert sorted(sets) == [250, 500]
    assert [a.name for a in sets[250]] == [f"{job.id}_000000250_high_noise.safetensors", f"{job.id}_000000250_low_noise.safetensors"]
    assert len(sets[500]) == 1


def test_pruning_keeps_whole_checkpoints_and_counts_only_complete_ones():
    # Given a Wan 2.2 job keeping 1 checkpoint, with pairs at 250 and 500 and only the first file of 750 arrived so far
    job = wan_job(checkpoints=CheckpointOptions(keep=1))
    table = ArtifactTable([*pair(job, 250), *pair(job, 500), artifact(job, 500, kind=ArtifactKind.OPTIMIZER),
                           artifact(job, 750, "_high_noise")])
    storage = PresigningStorage()

    # When checkpoints are pruned
    pruned = prune_checkpoints(table, storage, job)  # type: ignore[arg-type]

    # Then both files of 250 go, 500 (the newest whole checkpoint) stays with its optimizer state, and 750 waits for its other file
    assert pruned == [250]
    assert sorted(storage.deleted) == sorted(a.key for a in pair(job, 250))
    assert sorted((a.step, a.name) for a in table.artifacts if a.kind == ArtifactKind.CHECKPOINT) == [
        (500, f"{job.id}_000000500_high_noise.safetensors"), (500, f"{job.id}_000000500_low_noise.safetensors"),
        (750, f"{job.id}_000000750_high_noise.safetensors")]

    # When 750's low-noise file arrives
    table.artifacts.append(artifact(job, 750, "_low_noise"))
    pruned = prune_checkpoints(table, storage, job)  # type: ignore[arg-type]

    # Then 750 is the kept checkpoint, whole, and 500 is pruned with its optimizer state
    assert pruned == [500]
    assert sorted(a.name or "" for a in table.artifacts) == [f"{job.id}_000000750_high_noise.safetensors",
                                                            f"{job.id}_000000750_low_noise.safetensors"]

