"""Which stored checkpoint a job resumes from or keeps, and checkpoint retention in S3."""

from __future__ import annotations

from dataclasses import dataclass

from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..models.artifact import Artifact, ArtifactKind
from ..models.event import EventType
from ..models.job import Job


@dataclass(frozen=True)
class StoredCheckpoint:
    checkpoint: Artifact
    optimizer: Artifact | None


def newest_checkpoint(table: JobsTable, job: Job) -> StoredCheckpoint | None:
    """The job's newest checkpoint (and the optimizer state saved at that step, if any).

    Falls back to the checkpoint the job itself resumed from: a retry cancelled before it saved
    anything still has that one. 2 queries.
    """
    checkpoints = table.list_artifacts(job.id, ArtifactKind.CHECKPOINT)
    if not checkpoints:
        if job.resume_from is None:
            return None
        return StoredCheckpoint(job.resume_from, job.resume_optimizer)
    newest = max(checkpoints, key=lambda a: (a.step, a.created_at.isoformat() if a.created_at else ""))
    optimizers = [a for a in table.list_artifacts(job.id, ArtifactKind.OPTIMIZER) if a.step == newest.step]
    return StoredCheckpoint(newest, optimizers[0] if optimizers else None)


def prune_checkpoints(table: JobsTable, storage: Storage, job: Job) -> list[int]:
    """Keep the `checkpoints.keep` newest checkpoint steps; delete older checkpoint and optimizer files.

    An object is deleted only when no kept artifact shares its key (an engine may overwrite one
    optimizer file at every save). The artifact records go too, so the API never lists a dead
    link, and a `log` event says which steps were pruned. Returns the pruned steps.
    """
    stored = table.list_artifacts(job.id, ArtifactKind.CHECKPOINT) + table.list_artifacts(job.id, ArtifactKind.OPTIMIZER)
    steps = sorted({a.step for a in stored if a.kind == ArtifactKind.CHECKPOINT}, reverse=True)
    keep_steps = set(steps[: job.checkpoints.keep])
    newest = steps[0] if steps else None
    # Optimizer state is only useful to resume from the newest checkpoint (and it is large): keep it from there on.
    doomed = [a for a in stored if (a.kind == ArtifactKind.CHECKPOINT and a.step not in keep_steps)
              or (a.kind == ArtifactKind.OPTIMIZER and newest is not None and a.step < newest)]
    if not doomed:
        return []
    kept_keys = {a.key for a in stored if a not in doomed}
    for artifact in doomed:
        if artifact.key not in kept_keys:
            storage.delete(artifact.key)
        table.delete_artifact(job.id, artifact)
    pruned = sorted({a.step for a in doomed if a.kind == ArtifactKind.CHECKPOINT})
    if pruned:
        table.append_event(job.id, EventType.LOG, {"message": f"pruned checkpoints at steps {pruned} (keep={job.checkpoints.keep})",
                                                   "pruned_steps": pruned})
    return pruned
