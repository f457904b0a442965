"""A save of Wan 2.2 14B is two files (one per expert): the worker reports them only once both are stored, so the
control plane never records a checkpoint that would resume one expert and silently restart the other."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from loraforge.contract import WorkerEventType
from loraforge.models.artifact import Artifact, ArtifactKind
from loraforge.models.common import utcnow
from loraforge_worker.engines.base import EngineRun, RunLayout
from loraforge_worker.engines.output_parser import CheckpointSaved
from loraforge_worker.session import TrainingSession
from loraforge_worker.uploader import UploadError
from tests.integration.worker.helpers import aitoolkit_spec

NAME = "job_0wan0000000000001"


class ScriptedUploader:
    """Stores what it is given (its bytes' sha256), failing the names in `failing` like an exhausted presigned POST."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.failing = failing

    async def upload(self, path: Path, kind: ArtifactKind, step: int, name: str | None = None) -> Artifact:
        name = name or path.name
        if name in self.failing:
            raise UploadError(f"upload of {name} failed (HTTP 500: InternalError)")
        data = path.read_bytes()
        return Artifact(kind=kind, step=step, key=f"jobs/u/{NAME}/checkpoints/{name}", size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(), name=name, created_at=utcnow())


class RecordedEvents:
    def __init__(self) -> None:
        self.emitted: list[tuple[WorkerEventType, dict[str, Any]]] = []

    def emit(self, type_: WorkerEventType, data: dict[str, Any]) -> None:
        self.emitted.append((type_, data))


def split_save(tmp_path: Path, uploader: ScriptedUploader) -> tuple[TrainingSession, RecordedEvents]:
    """A session whose engine just printed `Saved checkpoint to <name>_000000004.safetensors` and wrote the two expert files."""
    layout = RunLayout(root=tmp_path / "w", name=NAME)
    layout.output_dir.mkdir(parents=True)
    for part in ("_high_noise", "_low_noise"):
        layout.checkpoint_path(4, part).write_bytes(f"lora{part}".encode())
    events = RecordedEvents()
    run = EngineRun(argv=["true"], cwd=tmp_path, config_path=tmp_path / "c.yaml")
    session = TrainingSession(aitoolkit_spec("wan22-14b"), layout, run, uploader, events, attempt=1, sample_poll_seconds=1.0)  # type: ignore[arg-type]
    session.staging.mkdir(parents=True)
    return session, events


async def save_and_wait(session: TrainingSession) -> None:
    await session._handle(CheckpointSaved(path=session.layout.checkpoint_path(4), step=4))
    assert await session.wait_uploads(10)


def test_both_files_of_a_save_are_reported_once_both_are_stored(tmp_path: Path):
    # Given a Wan 2.2 save of two expert files
    session, events = split_save(tmp_path, ScriptedUploader())

    # When the worker handles it
    asyncio.run(save_and_wait(session))

    # Then both are reported as checkpoint artifacts of step 4, and the staged copies are gone
    reported = [data["name"] for kind, data in events.emitted if kind == WorkerEventType.CHECKPOINT]
    assert sorted(reported) == [f"{NAME}_000000004_high_noise.safetensors", f"{NAME}_000000004_low_noise.safetensors"]
    assert sorted(a.name or "" for a in session.artifacts) == sorted(reported) and {a.step for a in session.artifacts} == {4}
    assert list(session.staging.iterdir()) == []


def test_a_save_whose_second_file_failed_to_upload_is_not_reported_at_all(tmp_path: Path):
    # Given a Wan 2.2 save whose low-noise file cannot be stored
    session, events = split_save(tmp_path, ScriptedUploader(frozenset({f"{NAME}_000000004_low_noise.safetensors"})))

    # When the worker handles it
    asyncio.run(save_and_wait(session))

    # Then neither file is reported (no event, not in the result manifest) and the upload error says why
    assert [kind for kind, _ in events.emitted if kind == WorkerEventType.CHECKPOINT] == []
    assert session.artifacts == []
    assert len(session.upload_errors) == 1 and "step 4 not reported" in session.upload_errors[0]
    assert list(session.staging.iterdir()) == []
