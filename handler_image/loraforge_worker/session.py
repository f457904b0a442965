"""One engine run: start the subprocess, turn its signals into events and uploads, judge the outcome.

Uploads happen while training goes on:
- a checkpoint only after the engine printed `Saved checkpoint to <path>` (AI-Toolkit writes files
  in place and non-atomically, so the line is the only proof a file is complete); it is hard-linked
  into a staging folder at once, so the engine's own pruning cannot remove it mid-upload;
- the optimizer state right after `Saved optimizer to …` (copied: the engine overwrites it at the next save);
- samples as they appear in `samples/` (both engines move complete files in).
The final LoRA is only accepted when the engine exited 0 AND every final file carries
`training_info.step == total steps`; it is uploaded by the pipeline after this check.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from loraforge.contract import TrainingSpec, WorkerErrorCode, WorkerEventType
from loraforge.models.artifact import Artifact, ArtifactKind
from loraforge.models.job import ResumeReport

from .engines.base import EngineRun, RunLayout, saved_files
from .engines.output_parser import (
    CheckpointSaved,
    EngineError,
    LogLine,
    OomSkipped,
    OptimizerSaved,
    OutputParser,
    Progress,
    Resumed,
    Stopped,
)
from .engines.process import EngineProcess
from .errors import WorkerFailure
from .events import EventSender
from .resume_check import RESUME_NOT_HONOURED, ResumeCheck, not_honoured_message
from .safetensors_header import is_complete, training_step
from .uploader import Uploader, UploadError

log = logging.getLogger("loraforge_worker.session")

SAMPLE_STEP = re.compile(r"__(\d{9})_")
MAX_LOG_BYTES = 50 * 1024 * 1024
TAIL_LINES = 40


class TrainingSession:
    def __init__(self, spec: TrainingSpec, layout: RunLayout, run: EngineRun, uploader: Uploader, events: EventSender, *,
                 attempt: int, sample_poll_seconds: float, clock: Callable[[], float] = time.monotonic,
                 resume_step: int | None = None) -> None:
        """`resume_step`: the step of the checkpoint placed for the engine to resume from (checked: `resume_check`)."""
        self.spec = spec
        self.layout = layout
        self.run = run
        self.uploader = uploader
        self.events = events
        self.attempt = attempt
        self.sample_poll_seconds = sample_poll_seconds
        self.clock = clock
        self.total = spec.hyperparameters.steps
        self.parser = OutputParser(layout.name)
        self.process = EngineProcess(run, self.parser)
        self.staging = layout.root / "staging"
        self.log_path = layout.root / "logs" / f"train-a{attempt}.log"
        self.metrics_path = layout.root / "logs" / f"metrics-a{attempt}.csv"
        self.artifacts: list[Artifact] = []
        self.upload_errors: list[str] = []
        self.pending: set[asyncio.Task[None]] = set()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.metrics: dict[int, tuple[float | None, float | None, float]] = {}
        self.last_step = 0
        self.last_loss: float | None = None
        self.last_checkpoint_step: int | None = None
        self.stop_reason: str | None = None
        self._optimizer_step: int | None = None
        self._seen_samples: set[str] = set()
        self._log_bytes = 0
        self._log_file: TextIO | None = None
        self._started_at = 0.0
        self.resume_check = ResumeCheck(resume_step) if resume_step else None

    # -- running ----------------------------------------------------------------------------------
    async def execute(self, deadline: float | None, stop_grace_seconds: float) -> int:
        """Run the engine to its end (or until `deadline`, monotonic clock); returns its exit code."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._started_at = self.clock()
        self._log_file = self.log_path.open("a", encoding="utf-8")
        await self.process.start()
        watchers = [asyncio.create_task(self._watch_samples())]
        if deadline is not None:
            watchers.append(asyncio.create_task(self._watch_deadline(deadline, stop_grace_seconds)))
        try:
            async for sig in self.process.signals():
                await self._handle(sig)
            code = await self.process.wait()
        finally:
            for task in watchers:
                task.cancel()
        if self.resume_check is not None and (report := self.resume_check.on_end()) is not None:
            self._on_resume_report(report)
        await self._scan_samples()
        return code

    async def stop(self, reason: str, grace_seconds: float, *, drain: bool = True) -> None:
        """Stop the engine group, then take in what it printed and saved while stopping (log lines, complete saves).

        `drain=False` when `execute` is still reading the engine's signals itself (the time-limit watchdog).
        """
        self.stop_reason = reason
        await self.process.stop(grace_seconds)
        if not drain:
            return
        try:
            await asyncio.wait_for(self._drain(), 5.0)
        except TimeoutError:
            pass

    async def _drain(self) -> None:
        async for sig in self.process.signals():
            await self._handle(sig)

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    async def _watch_deadline(self, deadline: float, grace: float) -> None:
        await asyncio.sleep(max(0.0, deadline - self.clock()))
        log.warning("time limit reached at step %s: stopping the engine", self.last_step)
        await self.stop("timeout", grace, drain=False)

    async def _watch_samples(self) -> None:
        while True:
            await asyncio.sleep(self.sample_poll_seconds)
            await self._scan_samples()

    async def _scan_samples(self) -> None:
        folder = self.layout.samples_dir
        if not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file() or path.name in self._seen_samples:
                continue
            self._seen_samples.add(path.name)
            match = SAMPLE_STEP.search(path.name)
            step = int(match.group(1)) if match else self.last_step
            self.upload_later(path, ArtifactKind.SAMPLE, step, path.name, WorkerEventType.SAMPLE)

    # -- signals ----------------------------------------------------------------------------------
    async def _handle(self, sig: object) -> None:
        if isinstance(sig, LogLine):
            self._write_log(sig.text)
        elif isinstance(sig, Progress):
            if self.resume_check is not None and (report := self.resume_check.on_progress(sig.step)) is not None:
                self._on_resume_report(report)
            if sig.step <= self.last_step:
                return  # the bar's first draw (step 0 or the resumed step) and redraws of a step already reported
            self.last_step = sig.step
            if sig.loss is not None:
                self.last_loss = sig.loss
            self.metrics[sig.step] = (sig.loss, sig.lr, round(self.clock() - self._started_at, 3))
            self.events.progress(sig.step, sig.total or self.total, sig.loss, sig.lr, sig.eta_seconds)
        elif isinstance(sig, CheckpointSaved):
            await self._on_checkpoint(sig)
        elif isinstance(sig, OptimizerSaved):
            await self._on_optimizer(sig)
        elif isinstance(sig, Resumed):
            self.last_step = max(self.last_step, sig.step)
            if self.resume_check is not None:
                self.resume_check.on_claim(sig.step)
        elif isinstance(sig, (OomSkipped, EngineError, Stopped)):
            log.info("engine signal: %s", sig)

    def _on_resume_report(self, report: ResumeReport) -> None:
        """A resume the engine did not honour is said, never hidden: a warning event with both steps, and progress from
        where the engine really is (the steps it trains again are reported again)."""
        if report.honoured:
            log.info("the engine resumed from step %s as asked", report.started_step)
            return
        self.last_step = report.started_step
        message = not_honoured_message(report, self.total)
        log.warning("%s", message)
        self.events.emit(WorkerEventType.LOG, {"lines": [message], "level": "warning", "code": RESUME_NOT_HONOURED,
                                               "expected_step": report.requested_step, "actual_step": report.started_step})

    def _write_log(self, text: str) -> None:
        self.tail.append(text)
        data = text + "\n"
        if self._log_file is not None and self._log_bytes + len(data) <= MAX_LOG_BYTES:
            self._log_bytes += len(data)
            self._log_file.write(data)
            self._log_file.flush()

    async def _on_checkpoint(self, sig: CheckpointSaved) -> None:
        self._optimizer_step = sig.step  # the next `Saved optimizer` line belongs to this save
        if sig.step is None:
            return  # the final file: verified and uploaded by the pipeline once the engine exited 0
        self.last_checkpoint_step = sig.step
        files: list[tuple[Path, str]] = []
        for path in saved_files(sig.path):
            staged = self.staging / path.name
            try:
                staged.unlink(missing_ok=True)
                os.link(path, staged)
            except OSError:
                await asyncio.to_thread(shutil.copyfile, path, staged)
            files.append((staged, path.name))
        self._track(asyncio.create_task(self._upload_checkpoint(files, sig.step)))

    async def _upload_checkpoint(self, files: list[tuple[Path, str]], step: int) -> None:
        """Upload every file of one save, then report them together. A save with a file that failed to upload is not
        reported at all (a split checkpoint missing an expert cannot be resumed; its other file stays unlisted in S3)."""
        try:
            results = await asyncio.gather(*(self.uploader.upload(path, ArtifactKind.CHECKPOINT, step, name) for path, name in files),
                                           return_exceptions=True)
        finally:
            for path, _ in files:
                path.unlink(missing_ok=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for error in errors:
            if not isinstance(error, (UploadError, OSError)):
                raise error
        if errors:
            reason = "; ".join(str(e) for e in errors)
            message = reason if len(files) == 1 else f"checkpoint at step {step} not reported, a file of it failed to upload: {reason}"
            self.upload_errors.append(message)
            log.warning("upload failed: %s", message)
            return
        for artifact in results:
            assert isinstance(artifact, Artifact)
            self.artifacts.append(artifact)
            self.events.emit(WorkerEventType.CHECKPOINT, artifact.model_dump(mode="json"))

    async def _on_optimizer(self, sig: OptimizerSaved) -> None:
        step, self._optimizer_step = self._optimizer_step, None
        if step is None or not sig.path.is_file():
            return  # the final save's optimizer state is not needed to resume anything
        name = f"optimizer_{step:09d}.pt"
        staged = self.staging / name
        try:
            await asyncio.to_thread(shutil.copyfile, sig.path, staged)
        except OSError as exc:
            log.warning("could not copy %s: %s", sig.path, exc)
            return
        self.upload_later(staged, ArtifactKind.OPTIMIZER, step, name, WorkerEventType.CHECKPOINT, remove_after=True)

    # -- uploads ----------------------------------------------------------------------------------
    def upload_later(self, path: Path, kind: ArtifactKind, step: int, name: str, event: WorkerEventType | None, *,
                remove_after: bool = False) -> None:
        self._track(asyncio.create_task(self._upload_one(path, kind, step, name, event, remove_after)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _upload_one(self, path: Path, kind: ArtifactKind, step: int, name: str, event: WorkerEventType | None,
                          remove_after: bool) -> None:
        try:
            artifact = await self.uploader.upload(path, kind, step, name)
        except (UploadError, OSError) as exc:
            self.upload_errors.append(str(exc))
            log.warning("upload failed: %s", exc)
            return
        finally:
            if remove_after:
                path.unlink(missing_ok=True)
        self.artifacts.append(artifact)
        if event is not None:
            self.events.emit(event, artifact.model_dump(mode="json"))

    async def wait_uploads(self, timeout: float | None = None) -> bool:
        """Wait for the uploads started so far; False when `timeout` ran out first."""
        if not self.pending:
            return True
        done, pending = await asyncio.wait(set(self.pending), timeout=timeout)
        return not pending

    # -- outcome ----------------------------------------------------------------------------------
    def write_metrics(self) -> Path:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step", "loss", "lr", "elapsed_seconds"])
            for step in sorted(self.metrics):
                loss, lr, elapsed = self.metrics[step]
                writer.writerow([step, "" if loss is None else loss, "" if lr is None else lr, elapsed])
        return self.metrics_path

    def tail_text(self, lines: int = 8) -> str:
        return " | ".join(list(self.tail)[-lines:])

    def judge(self, code: int) -> list[Path]:
        """The verified final file(s), or a WorkerFailure saying why the run did not succeed."""
        if self.stop_reason == "timeout":
            kept = f"; the last checkpoint (step {self.last_checkpoint_step}) is kept" if self.last_checkpoint_step else ""
            raise WorkerFailure(WorkerErrorCode.TIMEOUT, f"the run reached its time limit at step {self.last_step} of {self.total}{kept}")
        errors = self.parser.errors
        if errors:
            oom = next((e for e in errors if e.code == WorkerErrorCode.GPU_OOM), None)
            chosen = oom or errors[0]
            raise WorkerFailure(chosen.code, chosen.message)
        if code != 0:
            if self.parser.oom_seen:
                raise WorkerFailure(WorkerErrorCode.GPU_OOM, f"the trainer ran out of GPU memory and exited with code {code}")
            raise WorkerFailure(WorkerErrorCode.ENGINE_CRASHED, f"the trainer exited with code {code}: {self.tail_text()}")
        if self.parser.stopped:
            raise WorkerFailure(WorkerErrorCode.ENGINE_CRASHED, f"the trainer was interrupted at step {self.last_step} without a stop request")
        finals = saved_files(self.layout.final_path)
        if not finals:
            raise WorkerFailure(WorkerErrorCode.ENGINE_INCOMPLETE,
                                f"the trainer exited 0 at step {self.last_step} of {self.total} without writing {self.layout.final_path.name}")
        for path in finals:
            step = training_step(path) if is_complete(path) else None
            if step != self.total:
                raise WorkerFailure(WorkerErrorCode.ENGINE_INCOMPLETE,
                                    f"{path.name} records step {step}, not the {self.total} steps asked for (or the file is truncated)")
        return finals
