"""Test double of AI-Toolkit's `run.py` (never shipped): prints the documented console lines and
writes the documented files (reference/ai-toolkit.md §2-§3), so the worker's runner, parser and
pipeline can be tested without a GPU or the real toolkit.

    python fake_aitoolkit.py <config.yaml>       (copy it as run.py into a folder used as AI_TOOLKIT_DIR)

Reads `config.name`, `process[0].training_folder`, `train.steps`, `save.save_every`,
`save.max_step_saves_to_keep`, `sample.sample_every`, `sample.prompts`, `datasets[0].folder_path`.
Behaviour knobs (environment):
  FAKE_AITK_MODE        ok (default) | oom (OOM box three times, then the abort, exit 1) | crash (`Error running job`, exit 1)
                        | incomplete (exit 0, final file records a smaller step) | no_final (exit 0, no final file)
                        | ignore_sigint (keeps training after SIGINT; only SIGKILL stops it) | split (Wan 2.2 high/low noise files)
  FAKE_AITK_STEP_SECONDS  sleep per step (default 0.01); >= 1 prints the rate as s/it
  FAKE_AITK_ASCII         1: `#` bar blocks (a non-UTF-8 stream)
  FAKE_AITK_CRASH_AT      step at which `crash` mode fails (default: half way)
  FAKE_AITK_LORA_BYTES    tensor bytes in each LoRA file (default 16), for realistic upload sizes in benchmarks
  FAKE_AITK_RESUME        honour (default: continue from the newest checkpoint in the folder) | ignore (train from step 0
                          without a word about the checkpoint) | restart (print that it resumes, then train from step 0
                          anyway, as AI-Toolkit issue #1058 reports)
Like tqdm (created with `initial=<start step>`), the bar is first drawn at the step training starts from.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

import yaml


def write_safetensors(path: Path, step: int, epoch: int = 0) -> None:
    """A valid safetensors file (one F32 tensor) carrying AI-Toolkit's `training_info` metadata."""
    floats = max(4, int(os.environ.get("FAKE_AITK_LORA_BYTES", "16")) // 4)
    data = struct.pack("<4f", 0.1 * step, 0.2, 0.3, 0.4) + os.urandom(4 * (floats - 4))
    header = {
        "__metadata__": {"training_info": json.dumps({"step": step, "epoch": epoch}), "software": json.dumps({"name": "ai-toolkit"})},
        "lora_unet_down_blocks_0.lora_down.weight": {"dtype": "F32", "shape": [floats], "data_offsets": [0, len(data)]},
    }
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with path.open("wb") as fh:  # written in place, like AI-Toolkit (not atomic)
        fh.write(struct.pack("<Q", len(blob)) + blob + data)


def read_step(path: Path) -> int:
    with path.open("rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    return int(json.loads(header["__metadata__"]["training_info"])["step"])


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def bar(name: str, n: int, total: int, elapsed: float, per_step: float, loss: float, lr: float, ascii_bar: bool) -> str:
    filled = int(10 * n / total)
    blocks = ("#" * filled + " " * (10 - filled)) if ascii_bar else ("█" * filled + " " * (10 - filled))
    rate = f"{per_step:.2f}s/it" if per_step >= 1 else f"{1 / max(per_step, 1e-6):.2f}it/s"
    remaining = clock(per_step * (total - n))
    return f"\r{name}: {int(100 * n / total):3d}%|{blocks}| {n}/{total} [{clock(elapsed)}<{remaining}, {rate}, lr: {lr:.1e} loss: {loss:.3e}]"


def main() -> int:
    config = yaml.safe_load(Path(sys.argv[1]).read_text())
    name = config["config"]["name"]
    process = config["config"]["process"][0]
    total = int(process["train"]["steps"])
    save_every = int(process["save"]["save_every"])
    keep = int(process["save"].get("max_step_saves_to_keep", 5))
    sample_every = int(process["sample"].get("sample_every", 0) or 0)
    prompts = process["sample"].get("prompts") or []
    lr = float(process["train"]["lr"])
    mode = os.environ.get("FAKE_AITK_MODE", "ok")
    per_step = float(os.environ.get("FAKE_AITK_STEP_SECONDS", "0.01"))
    ascii_bar = os.environ.get("FAKE_AITK_ASCII") == "1"
    if mode == "ignore_sigint":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = Path(process["training_folder"]) / name
    samples = root / "samples"
    root.mkdir(parents=True, exist_ok=True)
    print("Running 1 job")
    print(json.dumps(process, indent=4))
    print("#############################################")
    print(f"# Running job: {name}")
    print("#############################################")
    print("Running  1 process")
    print("Loading VAE")
    dataset = Path(process["datasets"][0]["folder_path"])
    images = [p for p in dataset.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")]
    print(f"Dataset: {dataset}")
    print(f"  -  Found {len(images)} images")
    print(f"create LoRA network. base dim (rank): {process['network']['linear']}, alpha: {process['network']['linear_alpha']}")
    start = 0
    resume_mode = os.environ.get("FAKE_AITK_RESUME", "honour")
    saves = sorted(root.glob(f"{name}*.safetensors"), key=lambda p: p.stat().st_ctime)
    if saves and resume_mode != "ignore":
        latest = saves[-1]
        print(f"#### IMPORTANT RESUMING FROM {latest} ####")
        print(f"Loading from {latest}")
        start = read_step(latest)
        print(f"Found step {start} in metadata, starting from there")
        if (root / "optimizer.pt").exists():
            print(f"Loading optimizer state from {root / 'optimizer.pt'}")
            print("Updating optimizer LR from params")
        if resume_mode == "restart":
            start = 0
    print("Skipping first sample due to config setting")
    sys.stdout.flush()

    def save(step: int | None) -> None:
        suffix = "" if step is None else f"_{step:09d}"
        target = root / f"{name}{suffix}.safetensors"
        recorded = total if step is None else step
        if mode == "incomplete" and step is None:
            recorded = total - 1
        if mode == "no_final" and step is None:
            return
        if mode == "split":
            for part in ("_high_noise", "_low_noise"):
                write_safetensors(target.with_name(f"{target.stem}{part}.safetensors"), recorded)
        else:
            write_safetensors(target, recorded)
        print(f"Saved checkpoint to {target}")
        (root / "optimizer.pt").write_bytes(os.urandom(64))
        print(f"Saved optimizer to {root / 'optimizer.pt'}")
        if step is not None:
            old = sorted(root.glob(f"{name}_[0-9]*.safetensors"), key=lambda p: p.stat().st_ctime)
            for item in old[:-keep]:
                print(f"Removing old save: {item}")
                item.unlink()
        sys.stdout.flush()

    def sample(step: int) -> None:
        (samples / ".tmp").mkdir(parents=True, exist_ok=True)
        for i, _ in enumerate(prompts):
            file_name = f"{int(time.time() * 1000)}__{step:09d}_{i}.jpg"
            (samples / ".tmp" / file_name).write_bytes(b"\xff\xd8\xff\xe0fake-jpeg")
            os.replace(samples / ".tmp" / file_name, samples / file_name)

    crash_at = int(os.environ.get("FAKE_AITK_CRASH_AT", str(max(1, total // 2))))
    began = time.monotonic()
    blocks = int(10 * start / total)
    sys.stderr.write(f"\r{name}: {int(100 * start / total):3d}%|{('#' if ascii_bar else '█') * blocks}{' ' * (10 - blocks)}| "
                     f"{start}/{total} [00:00<?, ?it/s]")
    sys.stderr.flush()
    try:
        oom = 0
        for step in range(start, total):
            time.sleep(per_step)
            if mode == "oom" and step >= start + 1:
                oom += 1
                print("#" * 48)
                print(f"# OOM during training step, skipping batch {oom}/3 #")
                print("#" * 48)
                if oom > 3:
                    raise RuntimeError("OOM during training step 3 times in a row, aborting training")
                continue
            if mode == "crash" and step + 1 >= crash_at:
                raise ValueError("something broke in the trainer")
            n = step + 1
            loss = 1.0 / (1 + 0.1 * n)
            sys.stderr.write(bar(name, n, total, time.monotonic() - began, per_step, loss, lr, ascii_bar))
            sys.stderr.flush()
            if n < total and n % save_every == 0:
                print(f"\nSaving at step {n}")
                save(n)
            if n < total and sample_every and n % sample_every == 0:
                sample(n)
        sys.stderr.write("\n")
        save(None)
        if prompts:
            sample(total)
    except KeyboardInterrupt:
        print("")
        print("========================================")
        print("Job stopped")
        print("========================================")
        return 0
    except Exception as exc:  # noqa: BLE001 - the toolkit's own top level
        print(f"Error running job: {exc}")
        print("")
        print("========================================")
        print("Result:")
        print(" - 0 completed jobs")
        print(" - 1 failure")
        print("========================================")
        sys.stdout.flush()
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
