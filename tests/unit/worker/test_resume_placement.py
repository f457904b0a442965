"""The worker's resume downloader: every file of the stored checkpoint lands, checked, where the engine's own resume
finds it. Files are served over loopback HTTP (the worker's real streaming downloader); AI-Toolkit's lookup is
modelled from reference/ai-toolkit.md §3 and its Wan 2.2 14B LoRA loader (given either expert file, it loads the
sibling by swapping `_high_noise`/`_low_noise`, and skips a sibling that is not there)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loraforge.contract import CheckpointFile, ResumeFrom, WorkerErrorCode
from loraforge_worker.engines.base import RunLayout, run_name
from loraforge_worker.errors import WorkerFailure
from loraforge_worker.resume import place_resume
from loraforge_worker.safetensors_header import training_step
from tests.support.fake_aitoolkit import write_safetensors

OLD_RUN = "job_0old0000000000001"  # the failed job whose checkpoint is resumed (a manual retry is a new job)
NEW_RUN = run_name("job_0new0000000000002")
SPLIT_PARTS = ("_high_noise", "_low_noise")


class FileServer:
    """Loopback GET server over a dict of path → bytes; anything else is 404 (an object that no longer exists)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                body = server.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def serve(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[FileServer]:
    files = FileServer()
    yield files
    files.httpd.shutdown()
    files.httpd.server_close()


def stored_file(tmp_path: Path, name: str, step: int) -> bytes:
    path = tmp_path / "stored" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, step)
    return path.read_bytes()


def split_resume(server: FileServer, tmp_path: Path, step: int = 500, *, optimizer: bool = True) -> tuple[ResumeFrom, dict[str, bytes]]:
    """Both expert files of the old job's step (as recorded at upload: sha256 and size) and its optimizer state."""
    files, bodies = [], {}
    for part in SPLIT_PARTS:
        name = f"{OLD_RUN}_{step:09d}{part}.safetensors"
        body = stored_file(tmp_path, name, step)
        bodies[part] = body
        files.append(CheckpointFile(url=server.serve(f"/ckpt/{name}", body), name=name, sha256=hashlib.sha256(body).hexdigest(),
                                    size=len(body)))
    optimizer_url = server.serve("/ckpt/optimizer.pt", b"optimizer-state") if optimizer else None
    return ResumeFrom(step=step, files=files, optimizer_url=optimizer_url), bodies


def layout(tmp_path: Path) -> RunLayout:
    return RunLayout(root=tmp_path / "work" / f"{NEW_RUN}-a2", name=NEW_RUN)


def ai_toolkit_resume_candidate(save_root: Path, name: str) -> Path | None:
    """BaseSDTrainProcess.get_latest_save_path as reference/ai-toolkit.md §3 states it: the newest by ctime of
    `<name>*.safetensors`, `<name>*.pt` and `<name>*`, without paths containing `_LoRA`, `_refiner`, `_t2i` or `_cn`."""
    found = {p for pattern in (f"{name}*.safetensors", f"{name}*.pt", f"{name}*") for p in save_root.glob(pattern)}
    kept = [p for p in found if not any(marker in str(p) and marker not in name for marker in ("_LoRA", "_refiner", "_t2i", "_cn"))]
    return max(kept, key=lambda p: p.stat().st_ctime) if kept else None


def wan22_experts_loaded(chosen: Path) -> list[Path]:
    """What the Wan 2.2 14B model loads when resumed from `chosen`: the file of each expert that exists next to it."""
    text = str(chosen)
    if "_high_noise.safetensors" not in text and "_low_noise.safetensors" not in text:
        return [chosen]
    siblings = [text.replace("_low_noise.safetensors", "_high_noise.safetensors"), text.replace("_high_noise.safetensors", "_low_noise.safetensors")]
    return [Path(s) for s in siblings if os.path.exists(s)]


def checkpoint_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []


def test_both_expert_files_land_where_ai_toolkit_resumes_both_experts(server: FileServer, tmp_path: Path):
    # Given a resume of both expert files of step 500 of another job, with its optimizer state
    resume, bodies = split_resume(server, tmp_path)
    run = layout(tmp_path)

    # When the worker places it
    placed = place_resume(resume, run, max_bytes=1024**2)

    # Then both files are in the fresh output folder under this run's name, byte for byte, with optimizer.pt beside them
    assert checkpoint_files(run.output_dir) == [f"{NEW_RUN}_000000500_high_noise.safetensors", f"{NEW_RUN}_000000500_low_noise.safetensors"]
    for part in SPLIT_PARTS:
        assert run.checkpoint_path(500, part).read_bytes() == bodies[part]
    assert placed.files == [run.checkpoint_path(500, part) for part in SPLIT_PARTS]
    assert placed.optimizer == run.optimizer_path and run.optimizer_path.read_bytes() == b"optimizer-state"
    # and nothing else in the folder is a resume candidate (staging happened outside it)
    assert sorted(p.name for p in run.output_dir.iterdir()) == [*checkpoint_files(run.output_dir), "optimizer.pt"]

    # Then AI-Toolkit's lookup picks one of them, reads step 500, and the Wan 2.2 loader finds both experts
    chosen = ai_toolkit_resume_candidate(run.output_dir, run.name)
    assert chosen is not None and training_step(chosen) == 500
    assert sorted(p.name for p in wan22_experts_loaded(chosen)) == checkpoint_files(run.output_dir)


def test_a_single_file_checkpoint_queued_under_contract_1_is_placed_as_before(server: FileServer, tmp_path: Path):
    # Given a contract-1 resume: one checkpoint URL, its name and sha256, and the optimizer state
    name = f"{OLD_RUN}_000000040.safetensors"
    body = stored_file(tmp_path, name, 40)
    resume = ResumeFrom.model_validate({"step": 40, "checkpoint_url": server.serve(f"/ckpt/{name}", body), "checkpoint_name": name,
                                        "checkpoint_sha256": hashlib.sha256(body).hexdigest(),
                                        "optimizer_url": server.serve("/ckpt/optimizer.pt", b"opt")})
    run = layout(tmp_path)

    # When the worker places it
    place_resume(resume, run, max_bytes=1024**2)

    # Then it is `<name>_<step:09d>.safetensors`, the one file AI-Toolkit resumes from, with optimizer.pt
    assert checkpoint_files(run.output_dir) == [f"{NEW_RUN}_000000040.safetensors"]
    assert ai_toolkit_resume_candidate(run.output_dir, run.name) == run.checkpoint_path(40)
    assert run.checkpoint_path(40).read_bytes() == body and run.optimizer_path.read_bytes() == b"opt"


def test_a_corrupt_expert_file_fails_with_resume_failed_and_places_nothing(server: FileServer, tmp_path: Path):
    # Given a resume whose low-noise file in storage no longer matches the sha256 recorded at upload
    resume, bodies = split_resume(server, tmp_path)
    low = resume.files[1]
    server.files[f"/ckpt/{low.name}"] = bodies["_low_noise"][:-4] + b"\0\0\0\0"
    run = layout(tmp_path)

    # When the worker places it
    with pytest.raises(WorkerFailure) as failed:
        place_resume(resume, run, max_bytes=1024**2)

    # Then the run fails with RESUME_FAILED naming that file, and no half checkpoint is left for the engine to resume from
    assert failed.value.code == WorkerErrorCode.RESUME_FAILED and failed.value.kind == "system"
    assert low.name in failed.value.message and "sha256" in failed.value.message
    assert checkpoint_files(run.output_dir) == []


def test_a_missing_expert_file_fails_with_resume_failed_naming_it(server: FileServer, tmp_path: Path):
    # Given a resume whose high-noise file is gone from storage
    resume, _ = split_resume(server, tmp_path)
    del server.files[f"/ckpt/{resume.files[0].name}"]
    run = layout(tmp_path)

    # When the worker places it
    with pytest.raises(WorkerFailure) as failed:
        place_resume(resume, run, max_bytes=1024**2)

    # Then it fails with RESUME_FAILED: which file, and why
    assert failed.value.code == WorkerErrorCode.RESUME_FAILED
    assert resume.files[0].name in failed.value.message and "404" in failed.value.message
    assert checkpoint_files(run.output_dir) == []


def test_an_expert_file_of_another_step_fails_with_resume_failed(server: FileServer, tmp_path: Path):
    # Given a resume for step 500 whose low-noise file records step 250 (and no checksum to catch it earlier)
    resume, _ = split_resume(server, tmp_path)
    wrong = stored_file(tmp_path, "wrong.safetensors", 250)
    low = resume.files[1].model_copy(update={"url": server.serve("/ckpt/wrong", wrong), "sha256": None, "size": None})
    resume = ResumeFrom(step=500, files=[resume.files[0], low])

    # When the worker places it
    with pytest.raises(WorkerFailure) as failed:
        place_resume(resume, layout(tmp_path), max_bytes=1024**2)

    # Then it fails with RESUME_FAILED saying what the file records
    assert failed.value.code == WorkerErrorCode.RESUME_FAILED and "records step 250, not 500" in failed.value.message


def test_a_missing_optimizer_state_only_costs_the_optimizer(server: FileServer, tmp_path: Path):
    # Given a resume whose optimizer state is gone from storage
    resume, _ = split_resume(server, tmp_path, optimizer=False)
    resume = resume.model_copy(update={"optimizer_url": server.url("/ckpt/gone.pt")})
    run = layout(tmp_path)

    # When the worker places it
    placed = place_resume(resume, run, max_bytes=1024**2)

    # Then both expert files are placed and the run goes on with a fresh optimizer
    assert len(checkpoint_files(run.output_dir)) == 2 and placed.optimizer is None and not run.optimizer_path.exists()


def test_a_work_folder_ai_toolkit_would_skip_is_refused(server: FileServer, tmp_path: Path):
    # Given a work folder whose path contains `_cn` (AI-Toolkit drops every resume candidate under such a path)
    resume, _ = split_resume(server, tmp_path)
    run = RunLayout(root=tmp_path / "lora_cn" / f"{NEW_RUN}-a2", name=NEW_RUN)

    # When the worker places the checkpoint
    with pytest.raises(WorkerFailure) as failed:
        place_resume(resume, run, max_bytes=1024**2)

    # Then it refuses with RESUME_FAILED instead of letting training silently start from step 0
    assert failed.value.code == WorkerErrorCode.RESUME_FAILED and "'_cn'" in failed.value.message and "LORAFORGE_WORK_DIR" in failed.value.message
