"""Which stored checkpoint a job resumes from or keeps, and checkpoint retention in S3.

A checkpoint is ONE training step, stored as one file or, for models with one LoRA per expert (Wan 2.2 14B),
one file per part (`contract.CHECKPOINT_PARTS`); each file is its own `checkpoint` artifact with that step
(the worker reports them one by one). `checkpoint_sets` is the one grouping by step. A set is complete
when it has every part the job's checkpoints show: resuming from a set with a part missing would restore
one expert and silently retrain the other from scratch, so such a set is never chosen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ..contract import checkpoint_part
from ..dal.jobs_table import JobsTable
from ..dal.storage import Storage
from ..models.artifact import Artifact, ArtifactKind
from ..models.event import EventType
from ..models.job import Job


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint step: its file(s) in name order (`_high_noise` before `_low_noise`) and the optimizer state saved with it."""

    files: tuple[Artifact, ...]
    optimizer: Artifact | None

    @property
    def step(self) -> int:
        return self.files[0].step

    @property
    def checkpoint(self) -> Artifact:
        """The file that stands for the whole checkpoint where one artifact is recorded (`Job.resume_from`, a kept result)."""
        return self.files[0]


def _name(artifact: Artifact) -> str:
    return artifact.name or artifact.key.rsplit("/", 1)[-1]


def checkpoint_sets(checkpoints: Iterable[Artifact]) -> dict[int, tuple[Artifact, ...]]:
    """Checkpoint artifacts grouped by step, each group in name order (one file per name: the last record wins)."""
    by_step: dict[int, dict[str, Artifact]] = defaultdict(dict)
    for artifact in checkpoints:
        by_step[artifact.step][_name(artifact)] = artifact
    return {step: tuple(files[name] for name in sorted(files)) for step, files in by_step.items()}


def expected_parts(checkpoints: Iterable[Artifact]) -> frozenset[str]:
    """The expert parts this job's checkpoints are saved in (empty for single-file models)."""
    return frozenset(part for a in checkpoints if (part := checkpoint_part(_name(a))))


def is_complete(files: Iterable[Artifact], parts: frozenset[str]) -> bool:
    """A single-file checkpoint is whole; a split one needs a file for every part in `parts`."""
    have = {checkpoint_part(_name(a)) for a in files}
    return "" in have or have >= parts


def inherited_checkpoint(job: Job) -> StoredCheckpoint | None:
    """The checkpoint the job's current attempt started from (all its files; jobs from before `resume_files`: resume_from)."""
    if job.resume_from is None:
        return None
    files = tuple(job.resume_files) or (job.resume_from,)
    return StoredCheckpoint(files, job.resume_optimizer)


def complete_sets(job: Job, checkpoints: list[Artifact]) -> dict[int, tuple[Artifact, ...]]:
    """The job's complete checkpoint sets by step; the parts expected come from its own sets and the one it resumed from."""
    inherited = inherited_checkpoint(job)
    parts = expected_parts([*checkpoints, *(inherited.files if inherited else ())])
    return {step: files for step, files in checkpoint_sets(checkpoints).items() if is_complete(files, parts)}


def newest_checkpoint(table: JobsTable, job: Job) -> StoredCheckpoint | None:
    """The job's newest complete checkpoint (every file of its step) and the optimizer state saved at that step, if any.

    Falls back to the checkpoint the job itself resumed from: a retry cancelled before it saved anything, or one whose
    only new checkpoint lacks a part, still has that one. 2 queries (1 when the job has no checkpoint).
    """
    complete = complete_sets(job, table.list_artifacts(job.id, ArtifactKind.CHECKPOINT))
    if not complete:
        return inherited_checkpoint(job)
    newest = max(complete)
    optimizers = [a for a in table.list_artifacts(job.id, ArtifactKind.OPTIMIZER) if a.step == newest]
    return StoredCheckpoint(complete[newest], optimizers[0] if optimizers else None)


def prune_checkpoints(table: JobsTable, storage: Storage, job: Job) -> list[int]:
    """Keep the `checkpoints.keep` newest complete checkpoint steps (every file of a kept step); delete older checkpoint
    and optimizer files.

    An object is deleted only when no kept artifact shares its key (an engine may overwrite one
    optimizer file at every save). The artifact records go too, so the API never lists a dead
    link, and a `log` event says which steps were pruned. Returns the pruned steps.
    """
    checkpoints = table.list_artifacts(job.id, ArtifactKind.CHECKPOINT)
    stored = checkpoints + table.list_artifacts(job.id, ArtifactKind.OPTIMIZER)
    complete = sorted(complete_sets(job, checkpoints), reverse=True)
    newest = complete[0] if complete else None
    # `keep` counts complete checkpoints; a newer set still missing a part stays too (its other file may be on its way).
    keep_steps = set(complete[: job.checkpoints.keep]) | {a.step for a in checkpoints if newest is None or a.step > newest}
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
