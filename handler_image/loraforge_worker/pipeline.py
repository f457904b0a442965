"""The handler pipeline of one RunPod job (DESIGN §7).

validate input → `started` event (409 = duplicate run: stop) → download (streamed, bounded,
sha256) with the dataset's manifest → safe extract of the manifest's accepted items + captions → engine
config → engine subprocess with events and uploads → verify the final file → upload final, config, log, metrics → a small result manifest.

Every failure becomes a `WorkerResult` with a classified error, so the worker process goes on
serving the next job. A cancel (RunPod cancels the handler task) stops the engine group (SIGINT,
grace, SIGKILL), lets running uploads of complete files finish, reports `cancelled` and re-raises
`CancelledError` (otherwise RunPod would report COMPLETED).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loraforge.contract import (
    Engine,
    Timings,
    WorkerErrorCode,
    WorkerEventType,
    WorkerInput,
    WorkerResult,
    format_worker_error,
    worker_error,
)
from loraforge.models.artifact import Artifact, ArtifactKind
from loraforge.models.dataset import DatasetManifest
from loraforge.models.errors import JobError

from .dataset_prep import MAX_MANIFEST_BYTES, load_manifest, prepare_dataset
from .download import Downloaded, DownloadError, download
from .engines import UnknownEngine, get_engine
from .engines.base import RunLayout, run_name
from .errors import WorkerFailure
from .events import EventSender
from .resume import place_resume
from .runtime import WorkerRuntime
from .session import TrainingSession
from .uploader import Uploader, UploadError

log = logging.getLogger("loraforge_worker.pipeline")

FINAL_UPLOAD_WAIT_SECONDS = 600.0
FAILURE_UPLOAD_WAIT_SECONDS = 30.0


def parse_input(raw: Any) -> WorkerInput:
    if not isinstance(raw, dict):
        raise WorkerFailure(WorkerErrorCode.INVALID_INPUT, "the job input must be a JSON object")
    engine = raw.get("engine")
    if engine is not None and engine not in {e.value for e in Engine}:
        raise WorkerFailure(WorkerErrorCode.UNKNOWN_ENGINE, f"unknown engine {engine!r}; known: {', '.join(e.value for e in Engine)}")
    try:
        return WorkerInput.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in exc.errors()[:8])
        raise WorkerFailure(WorkerErrorCode.INVALID_INPUT, f"the job input does not match the worker contract ({problems})") from exc


def failure_output(result: WorkerResult) -> dict[str, Any]:
    """What the handler returns for a failed run: RunPod marks the job FAILED on a top-level `error`
    string and still delivers the rest as `output` (its SDK pops `error` from the dict)."""
    assert result.error is not None
    return {**result.model_dump(mode="json"), "error": format_worker_error(result.error)}


class JobRun:
    def __init__(self, job: dict[str, Any], runtime: WorkerRuntime) -> None:
        self.job = job
        self.runtime = runtime
        self.runpod_job_id = str(job.get("id") or "")
        self.t0 = time.monotonic()
        self.timings = Timings()
        self.input: WorkerInput | None = None
        self.session: TrainingSession | None = None
        self.extra_artifacts: list[Artifact] = []
        self.final: Artifact | None = None
        self.workspace: Path | None = None
        self.uploader: Uploader | None = None
        self.events: EventSender | None = None

    # -- entry ------------------------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        raw = self.job.get("input")
        try:
            self.input = parse_input(raw)
        except WorkerFailure as failure:
            ident = raw if isinstance(raw, dict) else {}
            job_id = str(ident.get("job_id") or self.runpod_job_id or "unknown")
            attempt = ident.get("attempt") if isinstance(ident.get("attempt"), int) else 0
            return failure_output(WorkerResult(job_id=job_id, attempt=attempt, status="failed", error=failure.to_job_error()))
        inp = self.input
        mirror = self.runtime.mirror_factory(self.job) if self.runtime.mirror_factory else None
        self.events = EventSender(inp.job_id, inp.attempt, inp.callback, runpod_job_id=self.runpod_job_id or None, mirror=mirror)
        # Absolute: the engine runs with its own cwd (AI-Toolkit's folder) and reads these paths from its config.
        self.workspace = self.runtime.work_root.absolute() / f"{run_name(inp.job_id)}-a{inp.attempt}-{uuid.uuid4().hex[:8]}"
        self.uploader = Uploader(inp.output)
        try:
            try:
                result = await self._run()
            except WorkerFailure as failure:
                result = await self._failed(failure)
            except asyncio.CancelledError:
                await self._on_cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must fail this job, not the worker process
                log.exception("unexpected worker error")
                result = await self._failed(WorkerFailure(WorkerErrorCode.ENGINE_CRASHED, f"the worker failed unexpectedly: {exc}"))
            end = WorkerEventType.COMPLETED if result.status == "completed" else WorkerEventType.FAILED
            self.events.emit(end, result.model_dump(mode="json"))
            await self.events.close(self.runtime.event_flush_seconds)
            return result.model_dump(mode="json", exclude={"error"}) if result.error is None else failure_output(result)
        finally:
            self._cleanup()

    # -- the happy path ---------------------------------------------------------------------------
    async def _run(self) -> WorkerResult:
        inp, events = self.input, self.events
        assert inp is not None and events is not None and self.workspace is not None
        status = await events.send_started({"runpod_job_id": self.runpod_job_id, "dispatch_token": inp.dispatch_token,
                                            "worker_id": self.runtime.worker_id})
        if status == 409:
            raise WorkerFailure(WorkerErrorCode.DUPLICATE_RUN,
                                "the API refused this run (409): another RunPod run holds the job or it is being cancelled")
        try:
            engine = get_engine(inp.engine)
        except UnknownEngine as exc:
            raise WorkerFailure(WorkerErrorCode.UNKNOWN_ENGINE, str(exc)) from exc
        layout = RunLayout(root=self.workspace, name=run_name(inp.job_id))
        self.workspace.mkdir(parents=True, exist_ok=True)

        started = time.monotonic()
        archive = await self._download_dataset(layout)
        manifest = await self._download_manifest(layout, archive)
        self.timings.download = round(time.monotonic() - started, 3)

        started = time.monotonic()
        prepared = await asyncio.to_thread(prepare_dataset, archive.path, layout.root, layout.dataset_dir, inp.spec,
                                           max_archive_bytes=inp.dataset.max_bytes, manifest=manifest)
        archive.path.unlink(missing_ok=True)
        if prepared.skipped:
            events.emit(WorkerEventType.LOG, {"lines": [f"skipped {s}" for s in prepared.skipped[:50]]})
        if inp.resume is not None:
            await self._place_resume(layout)
        try:
            run = engine.prepare(inp.spec, layout)
        except ValueError as exc:
            raise WorkerFailure(WorkerErrorCode.INVALID_INPUT, f"cannot build the engine config: {exc}") from exc
        self.timings.prepare = round(time.monotonic() - started, 3)

        deadline = self.t0 + inp.time_limit_seconds - self.runtime.time_limit_reserve(inp.time_limit_seconds)
        if time.monotonic() >= deadline:
            raise WorkerFailure(WorkerErrorCode.TIMEOUT, f"the time limit ({inp.time_limit_seconds} s) ran out before training started")
        self.session = session = TrainingSession(inp.spec, layout, run, self.uploader, events, attempt=inp.attempt,
                                                 sample_poll_seconds=self.runtime.sample_poll_seconds,
                                                 resume_step=inp.resume.step if inp.resume else None)
        session.upload_later(run.config_path, ArtifactKind.CONFIG, 0, f"config-a{inp.attempt}{run.config_path.suffix}", None)
        started = time.monotonic()
        code = await session.execute(deadline, self.runtime.stop_grace_seconds)
        self.timings.train = round(time.monotonic() - started, 3)

        started = time.monotonic()
        finals = session.judge(code)
        total = inp.spec.hyperparameters.steps
        # The engine's watchdog ends with the engine; the uploads after it must end by the time limit too, or RunPod's
        # executionTimeout (a margin later) kills the worker with nothing reported.
        time_left = max(0.0, self.t0 + inp.time_limit_seconds - time.monotonic())
        final_uploads = [self.uploader.upload(path, ArtifactKind.FINAL, total, path.name) for path in finals]
        try:
            uploaded = await asyncio.wait_for(asyncio.gather(*final_uploads), timeout=time_left)
        except UploadError as exc:
            raise WorkerFailure(WorkerErrorCode.UPLOAD_FAILED, str(exc)) from exc
        except TimeoutError as exc:
            raise WorkerFailure(WorkerErrorCode.TIMEOUT, f"the time limit ({inp.time_limit_seconds} s) ran out while the final LoRA "
                                                         "was uploading; the checkpoints stored so far are kept") from exc
        self.extra_artifacts.extend(uploaded)
        self.final = uploaded[0]
        await self._upload_logs()
        await session.wait_uploads(min(FINAL_UPLOAD_WAIT_SECONDS, max(0.0, self.t0 + inp.time_limit_seconds - time.monotonic())))
        self.timings.upload = round(time.monotonic() - started, 3)
        return self._result("completed")

    async def _download_dataset(self, layout: RunLayout) -> Downloaded:
        inp = self.input
        assert inp is not None
        target = layout.root / "dataset.zip"
        try:
            got = await asyncio.to_thread(download, inp.dataset.url, target, max_bytes=inp.dataset.max_bytes,
                                          expected_sha256=inp.dataset.sha256, expected_size=inp.dataset.size)
        except DownloadError as exc:
            if exc.reason in ("checksum", "size_mismatch"):
                raise WorkerFailure(WorkerErrorCode.DATASET_CHECKSUM_MISMATCH,
                                    f"the downloaded dataset is not the validated one: {exc.message}") from exc
            if exc.reason == "too_large":
                raise WorkerFailure(WorkerErrorCode.DATASET_UNREADABLE, f"the dataset is too large: {exc.message}") from exc
            raise WorkerFailure(WorkerErrorCode.DATASET_DOWNLOAD_FAILED, f"the dataset could not be downloaded: {exc.message}") from exc
        return got

    async def _download_manifest(self, layout: RunLayout, archive: Downloaded) -> DatasetManifest | None:
        """The dataset's manifest (what ingest accepted), when the input names one; it must describe this very archive."""
        inp = self.input
        assert inp is not None
        if inp.dataset.manifest_url is None:
            return None
        target = layout.root / "manifest.json"
        try:
            await asyncio.to_thread(download, inp.dataset.manifest_url, target, max_bytes=MAX_MANIFEST_BYTES)
        except DownloadError as exc:
            raise WorkerFailure(WorkerErrorCode.DATASET_DOWNLOAD_FAILED, f"the dataset manifest could not be downloaded: {exc.message}") from exc
        manifest = load_manifest(target)
        target.unlink(missing_ok=True)
        if manifest.archive_sha256 is not None and manifest.archive_sha256.lower() != archive.sha256:
            raise WorkerFailure(WorkerErrorCode.DATASET_CHECKSUM_MISMATCH,
                                f"the downloaded dataset (sha256 {archive.sha256[:12]}…) is not the archive its manifest describes "
                                f"(sha256 {manifest.archive_sha256[:12]}…): it changed after validation")
        return manifest

    async def _place_resume(self, layout: RunLayout) -> None:
        """Put every file of the stored checkpoint (and the optimizer state) where the engine's resume logic finds it."""
        inp, events = self.input, self.events
        assert inp is not None and inp.resume is not None and events is not None
        resume, total = inp.resume, inp.spec.hyperparameters.steps
        if resume.step >= total:
            raise WorkerFailure(WorkerErrorCode.INVALID_INPUT, f"cannot resume from step {resume.step}: the run has only {total} steps")
        placed = await asyncio.to_thread(place_resume, resume, layout, max_bytes=inp.output.max_bytes)
        events.emit(WorkerEventType.LOG, {"lines": [f"resuming from step {resume.step}: {', '.join(p.name for p in placed.files)}"
                                                    + (" + optimizer state" if placed.optimizer else " (no optimizer state)")]})

    async def _upload_logs(self) -> None:
        session, uploader = self.session, self.uploader
        if session is None or uploader is None:
            return
        session.close()
        for path, kind in ((session.log_path, ArtifactKind.LOG), (session.write_metrics(), ArtifactKind.METRICS)):
            if path.is_file() and path.stat().st_size > 0:
                try:
                    self.extra_artifacts.append(await uploader.upload(path, kind, session.last_step, path.name))
                except UploadError as exc:
                    log.warning("log upload failed: %s", exc)

    # -- failure and cancel ------------------------------------------------------------------------
    async def _failed(self, failure: WorkerFailure) -> WorkerResult:
        log.warning("job failed: %s", failure)
        session = self.session
        if session is not None:
            if session.process.returncode is None and session.process.proc is not None:
                await session.stop("failure", self.runtime.stop_grace_seconds)
            if self.events is not None and session.tail:
                self.events.emit(WorkerEventType.LOG, {"lines": list(session.tail)})
            try:
                await asyncio.wait_for(self._upload_logs(), FAILURE_UPLOAD_WAIT_SECONDS)
                await session.wait_uploads(FAILURE_UPLOAD_WAIT_SECONDS)
            except TimeoutError:
                pass
        return self._result("failed", failure.to_job_error())

    async def _on_cancel(self) -> None:
        session = self.session
        step = session.last_step if session else 0
        if session is not None and session.process.proc is not None:
            await session.stop("cancel", self.runtime.stop_grace_seconds)
            try:
                await asyncio.wait_for(self._upload_logs(), self.runtime.cancel_upload_wait_seconds)
            except TimeoutError:
                pass
            await session.wait_uploads(self.runtime.cancel_upload_wait_seconds)
        kept = session.last_checkpoint_step if session else None
        message = f"stopped at step {step} on request" + (f"; the last checkpoint (step {kept}) is kept" if kept else "")
        result = self._result("cancelled", worker_error(WorkerErrorCode.CANCELLED, message))
        if self.events is not None:
            self.events.emit(WorkerEventType.CANCELLED, result.model_dump(mode="json"))
            await self.events.close(self.runtime.event_flush_seconds)

    # -- helpers ----------------------------------------------------------------------------------
    def _result(self, status: str, error: JobError | None = None) -> WorkerResult:
        inp = self.input
        assert inp is not None
        session = self.session
        artifacts = list(session.artifacts) if session else []
        artifacts += self.extra_artifacts
        steps = session.last_step if session else 0
        if status == "completed":
            steps = inp.spec.hyperparameters.steps
        return WorkerResult(job_id=inp.job_id, attempt=inp.attempt, status=status, steps=steps,  # type: ignore[arg-type]
                            total_steps=inp.spec.hyperparameters.steps, final_loss=session.last_loss if session else None,
                            final=self.final, artifacts=artifacts, timings=self.timings, error=error,
                            resume=session.resume_check.report if session and session.resume_check else None)

    def _cleanup(self) -> None:
        if self.session is not None:
            if self.session.process.returncode is None:
                self.session.process.kill_now()
            self.session.close()
        if self.uploader is not None:
            self.uploader.close()
        if self.workspace is not None and not self.runtime.keep_workspace:
            shutil.rmtree(self.workspace, ignore_errors=True)


async def handle(job: dict[str, Any], runtime: WorkerRuntime | None = None) -> dict[str, Any]:
    """Run one RunPod job; never raises except CancelledError (which RunPod must see)."""
    return await JobRun(job, runtime or WorkerRuntime()).execute()
