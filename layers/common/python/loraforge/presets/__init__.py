"""Presets are data (presets.yaml), validated by the `Preset` model when loaded."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from ..contract import Engine, TrainingSpec
from ..models.base import DomainModel
from ..models.errors import InvalidInput
from ..models.job import CheckpointOptions, HyperparameterOverrides, Hyperparameters, SampleOptions

PRESETS_FILE = Path(__file__).with_name("presets.yaml")
"""The source: one YAML file, every number with a comment saying where it comes from."""
COMPILED_PRESETS_FILE = Path(__file__).with_name("presets.json")
"""presets.yaml as JSON (`make presets`), what the functions read: parsing it needs no YAML library on the cold
path (PyYAML's import and parse cost the API ~20 ms of cold start). A test fails when it drifts from the YAML."""
BOUNDED_FIELDS = ("steps", "learning_rate", "rank", "alpha", "batch_size", "resolution", "gradient_accumulation")


class Bound(DomainModel):
    model_config = ConfigDict(extra="forbid")
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min > self.max:
            raise ValueError("min must be <= max")
        return self


class Preset(DomainModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    name: str
    family: str
    engine: Engine
    arch: str | None = None
    base_model: str
    assistant_lora_path: str | None = None
    modality: Literal["image", "video", "text"] = "image"
    noise_scheduler: str = "ddpm"
    quantize: bool = False
    low_vram: bool = False
    gpu_class: str = Field(description="Maps to a RunPod endpoint through the RunPodEndpoints parameter")
    min_vram_gb: int = Field(ge=0)
    recommended_gpu: str
    reference_gpu: str
    seconds_per_step: float = Field(gt=0, description="At defaults (batch, resolution) on reference_gpu")
    startup_seconds: float = Field(ge=0, description="Model download/load/latent caching before step 1")
    min_images: int = Field(ge=1)
    recommended_images: int = Field(ge=1)
    min_side: int = Field(ge=1, description="Images smaller than this are rejected")
    recommended_resolution: int = Field(ge=1, description="Below this a warning is given")
    defaults: Hyperparameters
    bounds: dict[str, Bound]
    checkpoint_every: int = Field(ge=1)
    sample_settings: dict[str, Any] = Field(default_factory=dict)
    default_sample_prompts: list[str] = Field(default_factory=list)
    engine_options: dict[str, Any] = Field(default_factory=dict)
    sources: list[str] = Field(default_factory=list, description="Where the numbers come from")

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> Preset:
        unknown = set(self.bounds) - set(BOUNDED_FIELDS)
        if unknown:
            raise ValueError(f"bounds for unknown fields: {sorted(unknown)}")
        for field in BOUNDED_FIELDS:
            if field not in self.bounds:
                raise ValueError(f"preset {self.id} has no bound for {field}")
            value = getattr(self.defaults, field)
            b = self.bounds[field]
            if not b.min <= value <= b.max:
                raise ValueError(f"preset {self.id}: default {field}={value} outside [{b.min}, {b.max}]")
        return self


class PresetFile(DomainModel):
    presets: list[Preset]

    @model_validator(mode="after")
    def _unique(self) -> PresetFile:
        ids = [p.id for p in self.presets]
        if len(ids) != len(set(ids)):
            raise ValueError("duplicate preset ids")
        return self


def read_presets_yaml(path: str | Path = PRESETS_FILE) -> Any:
    import yaml  # only for the YAML source (tests, `make presets`); the functions read the compiled JSON

    # libyaml's loader (in PyYAML's wheels) parses presets.yaml ~10x faster than the pure-Python one.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(), Loader=loader)  # a safe loader


@lru_cache(maxsize=1)
def load_presets(path: str | None = None) -> dict[str, Preset]:
    """Every preset, validated. `path` names a YAML file (tests); by default the compiled presets.json."""
    raw = read_presets_yaml(path) if path else json.loads(COMPILED_PRESETS_FILE.read_text())
    return {p.id: p for p in PresetFile.model_validate(raw).presets}


def compile_presets() -> str:
    """presets.yaml as the JSON the functions read (validated first: a broken YAML never compiles)."""
    raw = read_presets_yaml()
    PresetFile.model_validate(raw)
    return json.dumps(raw, indent=1, sort_keys=True) + "\n"



def get_preset(preset_id: str) -> Preset:
    presets = load_presets()
    if preset_id not in presets:
        raise InvalidInput(
            f"unknown preset '{preset_id}'", code="UNKNOWN_PRESET", details={"known": sorted(presets)}
        )
    return presets[preset_id]


def resolve_hyperparameters(preset: Preset, overrides: HyperparameterOverrides | dict[str, Any] | None) -> Hyperparameters:
    """The preset's defaults with the user's subset on top, every bounded field within the preset's range."""
    if isinstance(overrides, dict):
        try:
            overrides = HyperparameterOverrides.model_validate(overrides)
        except ValidationError as exc:
            raise InvalidInput("invalid hyperparameters", code="INVALID_HYPERPARAMETERS",
                               details=exc.errors(include_url=False, include_context=False)) from exc
    given = overrides.model_dump(exclude_none=True) if overrides else {}
    merged = preset.defaults.model_dump() | given
    problems = []
    for field in BOUNDED_FIELDS:
        b = preset.bounds[field]
        if not b.min <= merged[field] <= b.max:
            problems.append({"field": field, "value": merged[field], "min": b.min, "max": b.max})
    if problems:
        names = ", ".join(p["field"] for p in problems)
        raise InvalidInput(f"hyperparameter out of the bounds of preset '{preset.id}': {names}",
                           code="HYPERPARAMETER_OUT_OF_BOUNDS", details=problems)
    return Hyperparameters.model_validate(merged)


def build_training_spec(
    preset: Preset,
    hyperparameters: Hyperparameters,
    *,
    trigger_word: str | None = None,
    samples: SampleOptions | None = None,
    checkpoints: CheckpointOptions | None = None,
) -> TrainingSpec:
    """What the worker trains: one function used by dispatch and by `loraforge worker render-config`."""
    checkpoints = checkpoints or CheckpointOptions()
    samples = samples or SampleOptions()
    every = min(checkpoints.every or preset.checkpoint_every, hyperparameters.steps)
    if not samples.prompts:
        prompts = [p.replace("[trigger]", trigger_word or "").strip() for p in preset.default_sample_prompts]
        samples = samples.model_copy(update={"prompts": [p for p in prompts if p]})
    return TrainingSpec(
        preset=preset.id, family=preset.family, arch=preset.arch, base_model=preset.base_model,
        assistant_lora_path=preset.assistant_lora_path, modality=preset.modality,
        noise_scheduler=preset.noise_scheduler, quantize=preset.quantize, low_vram=preset.low_vram,
        hyperparameters=hyperparameters, trigger_word=trigger_word,
        default_caption=trigger_word, samples=samples, checkpoints=checkpoints,
        checkpoint_every=every, sample_every=min(samples.every or every, hyperparameters.steps),
        sample_settings=preset.sample_settings, engine_options=preset.engine_options,
    )
