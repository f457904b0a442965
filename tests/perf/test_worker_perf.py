"""Worker overhead benchmark (issue 6). Run with `make perf`; prints the figures.

What a training job pays the worker besides training, measured through the real handler pipeline
(in-process, moto S3 on loopback, presigned GET/POST exactly as in production):
- overhead before the engine starts: download of a 50-image, 1024 px dataset (JPEG, ~q90) + safe extract
  + probe + captions + engine config (the pipeline's `timings.download + timings.prepare`);
- finalisation after the last step: verify the final file, upload it (a 150 MB LoRA, the size of a
  FLUX.1 rank-16 float16 LoRA) plus config, log and metrics, and wait for pending uploads (`timings.upload`).
The engine is the AI-Toolkit test double (tests/support/fake_aitoolkit.py), so training itself costs ~0.
Both are reported as a share of a 20-minute job. moto keeps objects in memory, and the machine is a shared
2-core box: absolute figures are indicative; S3 in the same region is usually faster than moto for large files.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from loraforge.contract import Engine
from loraforge.dal.storage import Storage
from loraforge_worker.pipeline import handle
from loraforge_worker.runtime import WorkerRuntime
from tests.integration.worker.helpers import aitoolkit_spec, fake_toolkit_dir, put_dataset, worker_input

IMAGES = 50
SIDE = 1024
LORA_BYTES = 150 * 1024**2
JOB_SECONDS = 20 * 60
RUNS = 3


def photo_like_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    base = np.stack([np.sin(6 * x + seed) * 0.5 + 0.5, np.cos(5 * y - seed) * 0.5 + 0.5, (x * y)], axis=-1) * 200
    noisy = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="JPEG", quality=90)
    return out.getvalue()


def dataset() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(IMAGES):
            zf.writestr(f"set/img_{i:03d}.jpg", photo_like_jpeg(i))
            zf.writestr(f"set/img_{i:03d}.txt", f"a photo of [trigger], view {i}")
    return out.getvalue()


def test_worker_overhead_and_finalisation(aws_stack, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AI_TOOLKIT_DIR", str(fake_toolkit_dir(tmp_path / "ai-toolkit")))
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.001")
    monkeypatch.setenv("FAKE_AITK_LORA_BYTES", str(LORA_BYTES))
    storage = Storage()
    data = dataset()
    stored = put_dataset(storage, "perf", "ds_perf", data)
    spec = aitoolkit_spec("flux-dev", steps=2, checkpoint_every=2, sample_every=2)
    spec = spec.model_copy(update={"samples": spec.samples.model_copy(update={"prompts": []})})

    overheads, finals = [], []
    for run in range(RUNS):
        inp = worker_input(storage, job_id=f"job_perf{run}", owner="perf", engine=Engine.AI_TOOLKIT, spec=spec, dataset=stored,
                           callback_url=None, secret="whsec_" + "A" * 44)
        started = time.perf_counter()
        out = asyncio.run(handle({"id": f"rp-{run}", "input": inp.model_dump(mode="json")},
                                 WorkerRuntime(work_root=tmp_path / "work", worker_id="perf", sample_poll_seconds=0.2)))
        wall = time.perf_counter() - started
        assert "error" not in out, out
        assert out["final"]["size"] > LORA_BYTES
        timings = out["timings"]
        overheads.append(timings["download"] + timings["prepare"])
        finals.append(timings["upload"])
        print(f"\nrun {run}: download {timings['download']:.2f} s, prepare {timings['prepare']:.2f} s, train {timings['train']:.2f} s, "
              f"finalise {timings['upload']:.2f} s, wall {wall:.2f} s")

    overhead, final = statistics.median(overheads), statistics.median(finals)
    print(f"\ndataset: {IMAGES} JPEG images of {SIDE}x{SIDE}, zip {len(data) / 1024**2:.1f} MB; final LoRA {LORA_BYTES / 1024**2:.0f} MB")
    print(f"worker overhead before the engine starts (median of {RUNS}): {overhead:.2f} s = {100 * overhead / JOB_SECONDS:.2f}% of a 20-minute job")
    print(f"finalisation after the last step (median of {RUNS}): {final:.2f} s = {100 * final / JOB_SECONDS:.2f}% of a 20-minute job")
    print(f"together: {overhead + final:.2f} s = {100 * (overhead + final) / JOB_SECONDS:.2f}% of a 20-minute job")
    # Target: the worker's own work costs under 5% of a 20-minute job even on this shared box.
    assert (overhead + final) / JOB_SECONDS < 0.05
