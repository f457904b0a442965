"""Put a stored checkpoint where the engine's own resume finds it (reference/ai-toolkit.md §3).

Both engines resume from the newest `<name>*.safetensors` in the fresh output folder (by ctime;
AI-Toolkit also looks at `<name>*.pt` and `<name>*` entries and drops candidates whose path
contains `_LoRA`, `_refiner`, `_t2i` or `_cn`: a run name cannot contain them and a work folder
that does is refused) and read the step from its `training_info` metadata, then load
`optimizer.pt` from the same folder if it is there.

Wan 2.2 14B's checkpoint is two files, one per expert. AI-Toolkit, handed either of them, loads
the other by swapping `_high_noise`/`_low_noise` in the name, and skips it without a word when it
is missing: that expert would silently start again from scratch. So EVERY file of the step is
downloaded and checked (sha256 and size as recorded at upload, `training_info.step`) before any
of them is moved into place as `<name>_<step:09d><part>.safetensors`, with this run's name (a
manual retry is a new job, so a new name). Files are staged outside the output folder, so nothing
half-downloaded ever matches `<name>*`. Any missing or corrupt file fails the run with
RESUME_FAILED, naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loraforge.contract import ResumeFrom, WorkerErrorCode, checkpoint_part

from .download import Downloaded, DownloadError, download
from .engines.base import RunLayout
from .errors import WorkerFailure
from .safetensors_header import NotSafetensors, training_step

log = logging.getLogger("loraforge_worker.resume")

Fetch = Callable[..., Downloaded]
SKIPPED_MARKERS = ("_LoRA", "_refiner", "_t2i", "_cn")
"""AI-Toolkit drops every resume candidate whose PATH contains one of these (unless the run name does)."""


@dataclass(frozen=True)
class PlacedResume:
    files: list[Path]
    optimizer: Path | None


def _failed(message: str) -> WorkerFailure:
    return WorkerFailure(WorkerErrorCode.RESUME_FAILED, message)


def place_resume(resume: ResumeFrom, layout: RunLayout, *, max_bytes: int, fetch: Fetch = download) -> PlacedResume:
    """Download, verify and place every checkpoint file of `resume` (+ optimizer state). Blocking: run it in a thread."""
    folder = str(layout.output_dir)
    skipped = [m for m in SKIPPED_MARKERS if m in folder and m not in layout.name]
    if skipped:
        raise _failed(f"the work folder {folder} contains {skipped[0]!r}, so AI-Toolkit would ignore any checkpoint in it; "
                      "set LORAFORGE_WORK_DIR to a path without it")
    staging = layout.root / "resume"
    staged: list[tuple[Path, Path]] = []
    for index, file in enumerate(resume.files):
        part = checkpoint_part(file.name)
        temp = staging / f"{index}{part}.safetensors"
        try:
            fetch(file.url, temp, max_bytes=max_bytes, expected_sha256=file.sha256, expected_size=file.size)
        except DownloadError as exc:
            if exc.reason in ("checksum", "size_mismatch"):
                raise _failed(f"resume file {file.name} is not the stored checkpoint (corrupt or replaced): {exc.message}") from exc
            raise _failed(f"resume file {file.name} could not be downloaded: {exc.message}") from exc
        try:
            recorded = training_step(temp)
        except (NotSafetensors, OSError) as exc:
            raise _failed(f"resume file {file.name} is not a readable safetensors file: {exc}") from exc
        if recorded != resume.step:
            raise _failed(f"resume file {file.name} records step {recorded}, not {resume.step}")
        staged.append((temp, layout.checkpoint_path(resume.step, part)))
    layout.output_dir.mkdir(parents=True, exist_ok=True)
    for temp, target in staged:
        os.replace(temp, target)
    return PlacedResume(files=[target for _, target in staged], optimizer=_place_optimizer(resume, layout, staging, max_bytes, fetch))


def _place_optimizer(resume: ResumeFrom, layout: RunLayout, staging: Path, max_bytes: int, fetch: Fetch) -> Path | None:
    """The optimizer state is an optimisation: without it the run resumes with a fresh optimizer (a warning, not a failure)."""
    if not resume.optimizer_url:
        return None
    temp = staging / "optimizer.pt"
    try:
        fetch(resume.optimizer_url, temp, max_bytes=max_bytes)
    except DownloadError as exc:
        log.warning("resume without optimizer state: %s", exc.message)
        return None
    os.replace(temp, layout.optimizer_path)
    return layout.optimizer_path
