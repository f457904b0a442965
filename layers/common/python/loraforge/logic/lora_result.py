"""A job's result: EVERY file of the LoRA it produced (Wan 2.2 14B saves one file per expert).

`JobResult.lora` stays the one file older clients read (the first in name order: for a split LoRA the
`_high_noise` file, as before); `JobResult.files` lists them all with the expert each holds, so a client
that downloads the result never gets half a LoRA.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..contract import checkpoint_part
from ..models.artifact import Artifact
from ..models.job import JobResult, ResultFile, ResumeReport


def _name(artifact: Artifact) -> str:
    return artifact.name or artifact.key.rsplit("/", 1)[-1]


def lora_result(files: Sequence[Artifact], *, steps: int | None, final_loss: float | None = None,
                resume: ResumeReport | None = None) -> JobResult:
    """The result made of `files` (one step's final or checkpoint files; duplicates by name collapse to the last)."""
    assert files, "a result needs at least one file"
    by_name = {_name(a): a for a in files}
    ordered = [by_name[name] for name in sorted(by_name)]
    parts = [ResultFile.model_validate({**a.model_dump(), "part": checkpoint_part(_name(a)).removeprefix("_") or None}) for a in ordered]
    return JobResult(lora=ordered[0], files=parts, steps=steps, final_loss=final_loss, resume=resume)
