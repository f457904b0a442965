"""The production engine: ostris AI-Toolkit (`python run.py <config.yaml>` in AI_TOOLKIT_DIR).

The config is built from the TrainingSpec for every preset family, with the keys of
reference/ai-toolkit.md §1: `job: extension`, process `type: sd_trainer`, `model.arch` and
`name_or_path`, `assistant_lora_path` (FLUX.1 schnell, Z-Image turbo), quantize settings, the
noise scheduler (flowmatch for DiTs), an explicit `train.lr` (the default 1e-6 trains nothing),
`sample.neg: ""` (the default False crashes SD1.x sampling), a fresh `training_folder` per
attempt (a reused folder silently resumes from stale files), `save.save_every` and
`max_step_saves_to_keep`, sample prompts with the trigger word, and the private dataset copy.
The preset's `engine_options` mirror AI-Toolkit's sections and are deep-merged into them
(`null` removes a key, e.g. `network.conv: null` for DiTs).

AI-Toolkit echoes its whole config to the log and expands `${VAR}` from the environment inside
config files, so the config never holds a secret and any `${` in user text is refused.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from loraforge.contract import Engine, TrainingSpec

from .base import EngineRun, RunLayout, TrainingEngine

ENV_TOOLKIT_DIR = "AI_TOOLKIT_DIR"
ENV_TOOLKIT_PYTHON = "AI_TOOLKIT_PYTHON"
DEFAULT_TOOLKIT_DIR = "/app/ai-toolkit"
SECTIONS = ("model", "train", "network", "datasets", "save", "sample")
STANDARD_BUCKETS = (512, 768, 1024)


class ConfigError(ValueError):
    pass


def resolution_buckets(resolution: int) -> list[int]:
    """AI-Toolkit trains one bucket set per listed resolution; the examples use [512, 768, 1024] up to the longest side."""
    return [b for b in STANDARD_BUCKETS if b < resolution] + [resolution]


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    for key, value in overlay.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def with_trigger(prompt: str, trigger_word: str | None) -> str:
    if trigger_word:
        return prompt.replace("[trigger]", trigger_word)
    return " ".join(prompt.replace("[trigger]", " ").split()).strip(" ,")


def refuse_env_placeholders(node: Any, path: str = "config") -> None:
    """AI-Toolkit replaces `${VAR}` in config files with environment values (and echoes the config)."""
    if isinstance(node, str) and "${" in node:
        raise ConfigError(f"{path} contains '${{', which AI-Toolkit would expand from the worker's environment; remove it")
    if isinstance(node, dict):
        for key, value in node.items():
            refuse_env_placeholders(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            refuse_env_placeholders(value, f"{path}[{i}]")


class AiToolkitEngine(TrainingEngine):
    engine = Engine.AI_TOOLKIT
    config_suffix = ".yaml"

    def __init__(self, toolkit_dir: str | Path | None = None, python: str | None = None) -> None:
        self.toolkit_dir = Path(toolkit_dir or os.environ.get(ENV_TOOLKIT_DIR) or DEFAULT_TOOLKIT_DIR)
        self.python = python or os.environ.get(ENV_TOOLKIT_PYTHON) or sys.executable

    def build_config(self, spec: TrainingSpec, layout: RunLayout) -> dict[str, Any]:
        hp = spec.hyperparameters
        unknown = set(spec.engine_options) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"engine_options for ai-toolkit may only hold the sections {list(SECTIONS)}; got {sorted(unknown)}")
        model: dict[str, Any] = {"name_or_path": spec.base_model}
        if spec.arch:
            model["arch"] = spec.arch
        model["quantize"] = spec.quantize
        model["low_vram"] = spec.low_vram
        if spec.assistant_lora_path:
            model["assistant_lora_path"] = spec.assistant_lora_path
        prompts = [p for p in (with_trigger(p, spec.trigger_word) for p in spec.samples.prompts) if p]
        sample = {"sampler": spec.noise_scheduler, **copy.deepcopy(spec.sample_settings)}
        sample.setdefault("seed", hp.seed)
        sample.update({"sample_every": spec.sample_every, "prompts": prompts})
        if not sample.get("neg"):
            sample["neg"] = ""
        train: dict[str, Any] = {
            "batch_size": hp.batch_size, "steps": hp.steps, "gradient_accumulation": hp.gradient_accumulation,
            "train_unet": True, "train_text_encoder": False, "gradient_checkpointing": True,
            "noise_scheduler": spec.noise_scheduler, "optimizer": hp.optimizer.value, "lr": hp.learning_rate,
            "lr_scheduler": hp.lr_scheduler.value, "dtype": "bf16",
        }
        if not prompts:
            train["disable_sampling"] = True
        dataset: dict[str, Any] = {
            "folder_path": str(layout.dataset_dir), "caption_ext": "txt", "caption_dropout_rate": hp.caption_dropout_rate,
            "shuffle_tokens": False, "resolution": resolution_buckets(hp.resolution),
        }
        process: dict[str, Any] = {
            "type": "sd_trainer",
            "training_folder": str(layout.training_folder),
            "device": "cuda:0",
        }
        if spec.trigger_word:
            process["trigger_word"] = spec.trigger_word
        process.update({
            "network": {"type": "lora", "linear": hp.rank, "linear_alpha": hp.alpha},
            "save": {"dtype": "float16", "save_every": spec.checkpoint_every,
                     "max_step_saves_to_keep": spec.checkpoints.keep, "push_to_hub": False},
            "datasets": [dataset],
            "train": train,
            "model": model,
            "sample": sample,
        })
        for section, overlay in spec.engine_options.items():
            if not isinstance(overlay, dict):
                raise ConfigError(f"engine_options.{section} must be a mapping")
            if section == "datasets":
                deep_merge(dataset, overlay)
            else:
                deep_merge(process.setdefault(section, {}), overlay)
        config = {
            "job": "extension",
            "config": {"name": layout.name, "process": [process]},
            "meta": {"name": layout.name, "version": "1.0", "loraforge_preset": spec.preset},
        }
        refuse_env_placeholders(config)
        return config

    def render(self, config: dict[str, Any]) -> str:
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)

    def command(self, config_path: Path, layout: RunLayout, spec: TrainingSpec) -> EngineRun:
        env = {"SEED": str(spec.hyperparameters.seed), "HF_HUB_DISABLE_TELEMETRY": "1"}
        return EngineRun(argv=[self.python, "run.py", str(config_path)], cwd=self.toolkit_dir, config_path=config_path, env=env)
