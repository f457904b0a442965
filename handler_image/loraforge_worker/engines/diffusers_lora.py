"""The `diffusers` engine: LoRA on a Stable-Diffusion-architecture UNet with diffusers + peft.

Runs on CPU (the local stack and CI train the `tiny-sd` model for real) and on a GPU. The
trainer (`loraforge_worker.train_diffusers`) runs as a subprocess from a JSON config, follows
AI-Toolkit's file layout and prints AI-Toolkit's console lines, so the worker treats both engines
alike (saves, samples, resume, stop, success check).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from loraforge.contract import Engine, TrainingSpec

from . import tiny_sd
from .base import EngineRun, RunLayout, TrainingEngine

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
KNOWN_OPTIONS = frozenset({"torch_threads", "dtype", "target_modules", "init_lora_weights", "tiny_model"})
DEFAULT_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]
SUPPORTED_OPTIMIZERS = frozenset({"adamw", "adamw8bit", "adafactor", "prodigy"})


class DiffusersLoraEngine(TrainingEngine):
    engine = Engine.DIFFUSERS
    config_suffix = ".json"

    def __init__(self, model_cache: str | Path | None = None) -> None:
        self.model_cache = Path(model_cache) if model_cache else None

    def build_config(self, spec: TrainingSpec, layout: RunLayout) -> dict[str, Any]:
        options = spec.engine_options
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:
            raise ValueError(f"engine_options for diffusers may only hold {sorted(KNOWN_OPTIONS)}; got {sorted(unknown)}")
        hp = spec.hyperparameters
        if tiny_sd.is_tiny_sd(spec.base_model):
            base: dict[str, Any] = {"tiny_sd": tiny_sd.resolve_config(options.get("tiny_model")),
                                    "cache_root": str(self.model_cache or tiny_sd.default_cache_root())}
        else:
            base = {"name_or_path": spec.base_model}
        settings = spec.sample_settings
        prompts = [p.replace("[trigger]", spec.trigger_word) if spec.trigger_word else p.replace("[trigger]", "").strip()
                   for p in spec.samples.prompts]
        return {
            "name": layout.name,
            "base_model": base,
            "dataset_dir": str(layout.dataset_dir),
            "output_dir": str(layout.output_dir),
            "steps": hp.steps,
            "learning_rate": hp.learning_rate,
            "rank": hp.rank,
            "alpha": hp.alpha,
            "batch_size": hp.batch_size,
            "resolution": hp.resolution,
            "optimizer": hp.optimizer.value,
            "lr_scheduler": hp.lr_scheduler.value,
            "gradient_accumulation": hp.gradient_accumulation,
            "caption_dropout_rate": hp.caption_dropout_rate,
            "seed": hp.seed,
            "save_every": spec.checkpoint_every,
            "max_step_saves_to_keep": spec.checkpoints.keep,
            "sample_every": spec.sample_every,
            "sample": {
                "prompts": [p for p in prompts if p],
                "neg": settings.get("neg") or "",
                "guidance_scale": float(settings.get("guidance_scale", 7.5)),
                "sample_steps": int(settings.get("sample_steps", 20)),
                "width": int(settings.get("width", hp.resolution)),
                "height": int(settings.get("height", hp.resolution)),
                "seed": int(settings.get("seed", hp.seed)),
            },
            "target_modules": list(options.get("target_modules") or DEFAULT_TARGET_MODULES),
            "init_lora_weights": options.get("init_lora_weights", "gaussian"),
            "torch_threads": int(options.get("torch_threads", 0)),
            "dtype": options.get("dtype", "fp32"),
            "trigger_word": spec.trigger_word,
            "meta": {"loraforge_preset": spec.preset, "ss_base_model_version": spec.family},
        }

    def render(self, config: dict[str, Any]) -> str:
        if config["optimizer"] not in SUPPORTED_OPTIMIZERS:
            raise ValueError(f"optimizer {config['optimizer']} is not supported by the diffusers engine")
        return json.dumps(config, indent=2) + "\n"

    def command(self, config_path: Path, layout: RunLayout, spec: TrainingSpec) -> EngineRun:
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p),
               "TOKENIZERS_PARALLELISM": "false"}
        threads = int(spec.engine_options.get("torch_threads", 0))
        if threads > 0:
            env["OMP_NUM_THREADS"] = str(threads)
        return EngineRun(argv=[sys.executable, "-m", "loraforge_worker.train_diffusers", str(config_path)],
                         cwd=layout.root, config_path=config_path, env=env)
