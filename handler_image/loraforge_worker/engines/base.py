"""The one interface every training engine implements.

An engine turns a TrainingSpec into a config file plus a command line. Both engines follow
AI-Toolkit's on-disk conventions, so placing a resume checkpoint, finding saves and samples and
verifying the final file are the same code for both:

    <training_folder>/<name>/<name>_<step:09d>.safetensors   step checkpoints
    <training_folder>/<name>/<name>.safetensors              the final LoRA (training_info.step == total)
    <training_folder>/<name>/optimizer.pt                    optimizer state of the newest save
    <training_folder>/<name>/samples/<ms>__<step:09d>_<i>.<ext>  sample images (moved in complete)

Both also print AI-Toolkit's console lines, so one parser (`output_parser`) turns either engine's
output into the same normalized signals.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraforge.contract import CHECKPOINT_PARTS, Engine, TrainingSpec

NAME_RE = re.compile(r"[^a-z0-9_]+")


def run_name(job_id: str) -> str:
    """The engine's config.name: file names derive from it, so keep it to [a-z0-9_].

    AI-Toolkit skips resume candidates whose name contains `_LoRA`, `_refiner`, `_t2i` or `_cn`;
    a lowercase job id cannot produce those.
    """
    name = NAME_RE.sub("_", job_id.lower()).strip("_")
    return name or "lora"


@dataclass(frozen=True)
class RunLayout:
    """Folders of one attempt. `training_folder` is fresh per attempt (a reused folder resumes from stale files)."""

    root: Path
    name: str

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def training_folder(self) -> Path:
        return self.root / "output"

    @property
    def output_dir(self) -> Path:
        return self.training_folder / self.name

    @property
    def samples_dir(self) -> Path:
        return self.output_dir / "samples"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    def checkpoint_path(self, step: int, part: str = "") -> Path:
        """`part`: "" or one of `CHECKPOINT_PARTS` (the file of one expert of a split checkpoint)."""
        return self.output_dir / f"{self.name}_{step:09d}{part}.safetensors"

    @property
    def final_path(self) -> Path:
        return self.output_dir / f"{self.name}.safetensors"

    @property
    def optimizer_path(self) -> Path:
        return self.output_dir / "optimizer.pt"


@dataclass
class EngineRun:
    """What to execute: the command, where, with which environment, and the config it reads."""

    argv: list[str]
    cwd: Path
    config_path: Path
    env: dict[str, str] = field(default_factory=dict)


class TrainingEngine(ABC):
    engine: Engine
    config_suffix: str

    @abstractmethod
    def build_config(self, spec: TrainingSpec, layout: RunLayout) -> dict[str, Any]:
        """The engine config as data (pure: `loraforge worker render-config` prints it)."""

    @abstractmethod
    def render(self, config: dict[str, Any]) -> str:
        """The config file's text."""

    @abstractmethod
    def command(self, config_path: Path, layout: RunLayout, spec: TrainingSpec) -> EngineRun:
        """The command line that trains from `config_path`."""

    def render_spec(self, spec: TrainingSpec, layout: RunLayout) -> str:
        return self.render(self.build_config(spec, layout))

    def prepare(self, spec: TrainingSpec, layout: RunLayout) -> EngineRun:
        layout.config_dir.mkdir(parents=True, exist_ok=True)
        layout.training_folder.mkdir(parents=True, exist_ok=True)
        config_path = layout.config_dir / f"{layout.name}{self.config_suffix}"
        config_path.write_text(self.render_spec(spec, layout))
        return self.command(config_path, layout, spec)


SPLIT_SUFFIXES = CHECKPOINT_PARTS


def saved_files(path: Path) -> list[Path]:
    """The file(s) behind a `Saved checkpoint to <path>` line.

    Wan 2.2 14B with split LoRAs prints the combined name but writes `<stem>_high_noise` and
    `<stem>_low_noise` files instead (one per expert); every other model writes `path` itself.
    """
    if path.is_file():
        return [path]
    return [variant for suffix in SPLIT_SUFFIXES if (variant := path.with_name(f"{path.stem}{suffix}{path.suffix}")).is_file()]
