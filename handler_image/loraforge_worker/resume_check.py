"""Did the engine really continue from the checkpoint the attempt resumes from?

Placing the checkpoint where the engine's resume looks (`resume.py`) is not proof that it resumed:
AI-Toolkit issues #1058 (a resume that restarts at step 0), #329 (one that repeats steps) and #688 show
runs that silently trained again from scratch, while the job said it resumed. Two things tell what the
engine did (reference/ai-toolkit.md §2-§3), and both engines print them:

- its claim: `Found step N in metadata, starting from there` after `#### IMPORTANT RESUMING FROM <file> ####`;
- its first training bar: tqdm is created with `initial=<start step>`, so its first draw shows the step it
  starts from (an engine that draws only after a step shows one more, which the claim then covers).

The step the engine started from is its claim when its first bar agrees (at or past the claim), else the
first bar's step (a claim the bar contradicts, or no claim at all: it loaded nothing). The resume is
honoured when that is the requested step. When it is not, the worker does NOT stop: the engine is then
training a complete LoRA from where it started, inside a time limit sized for the whole run, and stopping
would bill the user for a model load and leave nothing. It says so instead (a `log` event with code
`RESUME_NOT_HONOURED`, the expected and the actual step), reports progress as the engine runs, and the
result carries the `ResumeReport` (docs/worker.md, "Resume").
"""

from __future__ import annotations

from dataclasses import dataclass

from loraforge.contract import RESUME_NOT_HONOURED
from loraforge.models.job import ResumeReport

__all__ = ["RESUME_NOT_HONOURED", "ResumeCheck", "not_honoured_message"]


@dataclass
class ResumeCheck:
    """Follows one engine run that was asked to resume from `requested`; `report` is set once it is decided."""

    requested: int
    claimed: int | None = None
    report: ResumeReport | None = None

    def on_claim(self, step: int) -> None:
        """The engine printed `Found step <step> in metadata, starting from there`."""
        if self.report is None:
            self.claimed = step

    def on_progress(self, step: int) -> ResumeReport | None:
        """The engine drew a training bar at `step`: the first one decides. Returns the report when this call decided it."""
        if self.report is not None:
            return None
        started = self.claimed if self.claimed is not None and step >= self.claimed else step
        return self._decide(started)

    def on_end(self) -> ResumeReport | None:
        """The engine ended without drawing a training bar: its claim alone decides (no claim: nothing is known)."""
        if self.report is not None or self.claimed is None:
            return None
        return self._decide(self.claimed)

    def _decide(self, started: int) -> ResumeReport:
        self.report = ResumeReport(requested_step=self.requested, started_step=started, honoured=started == self.requested)
        return self.report


def not_honoured_message(report: ResumeReport, total: int) -> str:
    """What the job's events say when the engine did not continue from the checkpoint."""
    said = f"the trainer started at step {report.started_step}, not at step {report.requested_step} of the checkpoint it was given"
    if report.started_step < report.requested_step:
        return (f"{RESUME_NOT_HONOURED}: {said}; it trains steps {report.started_step + 1}-{total} (steps "
                f"{report.started_step + 1}-{report.requested_step} again) and progress counts from step {report.started_step}")
    return f"{RESUME_NOT_HONOURED}: {said}; it trains steps {report.started_step + 1}-{total} only"
