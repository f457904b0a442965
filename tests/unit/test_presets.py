"""presets.yaml is valid and coherent; the loader refuses broken files; hyperparameters and training specs resolve."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from loraforge.contract import Engine
from loraforge.models.errors import InvalidInput
from loraforge.models.job import CheckpointOptions, HyperparameterOverrides, Hyperparameters, Optimizer, SampleOptions
from loraforge.presets import BOUNDED_FIELDS, PRESETS_FILE, Preset, build_training_spec, get_preset, load_presets, resolve_hyperparameters

# DESIGN §4: FLUX.1 dev/schnell, SDXL, SD 1.5, SD 3.5, Wan 2.1/2.2, Z-Image turbo, Qwen-Image, Chroma, tiny-sd.
DESIGN_PRESETS = {
    "flux-dev": "flux",
    "flux-schnell": "flux",
    "sdxl": "sdxl",
    "sd15": "sd1",
    "sd35-large": "sd3",
    "wan21-1.3b": "wan21",
    "wan22-14b": "wan22_14b",
    "zimage-turbo": "zimage",
    "qwen-image": "qwen_image",
    "chroma": "chroma",
}
ALLOWED_ARCHS = {"flux", "sdxl", "sd1", "sd3", "wan21", "wan22_14b", "zimage", "qwen_image", "chroma"}
DIT_ARCHS = {"flux", "sd3", "wan21", "wan22_14b", "zimage", "qwen_image", "chroma"}
UNET_ARCHS = {"sdxl", "sd1"}
GPU_CLASSES = {"24gb", "48gb", "80gb", "cpu"}
NUMERIC_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@pytest.fixture(autouse=True)
def _fresh_presets_cache() -> Iterator[None]:
    load_presets.cache_clear()
    yield
    load_presets.cache_clear()


@pytest.fixture
def presets() -> dict[str, Preset]:
    return load_presets()


def _raw_file() -> dict[str, Any]:
    return yaml.safe_load(PRESETS_FILE.read_text())


def _raw_preset(preset_id: str) -> dict[str, Any]:
    return copy.deepcopy(next(p for p in _raw_file()["presets"] if p["id"] == preset_id))


def _write(tmp_path: Path, presets: list[dict[str, Any]]) -> str:
    path = tmp_path / "presets.yaml"
    path.write_text(yaml.safe_dump({"presets": presets}))
    return str(path)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


# ───────────────────────── the shipped file ─────────────────────────


def test_every_design_family_has_a_preset(presets: dict[str, Preset]) -> None:
    # Given the shipped presets.yaml
    # When it is loaded
    ids = set(presets)

    # Then every family named in DESIGN §4 is present, plus the CPU default
    assert set(DESIGN_PRESETS) | {"tiny-sd"} <= ids


def test_every_default_is_within_its_bounds(presets: dict[str, Preset]) -> None:
    # Given every preset
    for preset in presets.values():
        # When its defaults are compared with its bounds
        # Then every bounded field has a bound and the default lies within it
        assert set(preset.bounds) == set(BOUNDED_FIELDS), preset.id
        for field in BOUNDED_FIELDS:
            bound = preset.bounds[field]
            assert bound.min <= getattr(preset.defaults, field) <= bound.max, (preset.id, field)


def test_ai_toolkit_presets_use_known_archs(presets: dict[str, Preset]) -> None:
    # Given the AI-Toolkit presets
    ai_toolkit = {pid: p for pid, p in presets.items() if p.engine == Engine.AI_TOOLKIT}

    # When their arch is read
    # Then it is one of AI-Toolkit's model.arch values, and the expected one for each family
    assert ai_toolkit, "no ai-toolkit presets"
    for pid, preset in ai_toolkit.items():
        assert preset.arch in ALLOWED_ARCHS, pid
    for pid, arch in DESIGN_PRESETS.items():
        assert presets[pid].engine == Engine.AI_TOOLKIT
        assert presets[pid].arch == arch, pid


def test_dits_use_flowmatch_and_unets_ddpm(presets: dict[str, Preset]) -> None:
    # Given the AI-Toolkit presets
    for preset in presets.values():
        if preset.engine != Engine.AI_TOOLKIT:
            continue
        # When the noise scheduler and the sampler are read
        # Then DiTs train with flowmatch, SD1.5/SDXL with ddpm, and the sampler matches the training scheduler
        expected = "flowmatch" if preset.arch in DIT_ARCHS else "ddpm"
        assert preset.arch in DIT_ARCHS | UNET_ARCHS
        assert preset.noise_scheduler == expected, preset.id
        assert preset.sample_settings["sampler"] == preset.noise_scheduler, preset.id


def test_dits_train_no_conv_layers_and_unets_do(presets: dict[str, Preset]) -> None:
    # Given the AI-Toolkit presets
    for preset in presets.values():
        if preset.engine != Engine.AI_TOOLKIT:
            continue
        # When the network section of the engine options is read
        network = preset.engine_options["network"]

        # Then conv LoRA is disabled for DiTs (as the AI-Toolkit UI does) and set for UNet models
        if preset.arch in DIT_ARCHS:
            assert network.get("conv") is None, preset.id
        else:
            assert network["conv"] >= 1, preset.id


def test_distilled_models_carry_their_training_adapter(presets: dict[str, Preset]) -> None:
    # Given the distilled models and the others
    # When assistant_lora_path is read
    # Then schnell and Z-Image Turbo carry their training adapter and no other preset has one
    assert presets["flux-schnell"].assistant_lora_path == "ostris/FLUX.1-schnell-training-adapter"
    assert presets["zimage-turbo"].assistant_lora_path == "ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors"
    others = [p.id for p in presets.values() if p.assistant_lora_path and p.id not in {"flux-schnell", "zimage-turbo"}]
    assert others == []


def test_wan22_fits_24gb_only_with_uint4_ara_and_low_vram(presets: dict[str, Preset]) -> None:
    # Given the Wan 2.2 14B preset
    wan = presets["wan22-14b"]

    # When its model options are read
    model = wan.engine_options["model"]
    train = wan.engine_options["train"]

    # Then it is the 24 GB recipe: uint4 with the accuracy-recovery adapter, low_vram, both experts, boundary switch
    assert wan.modality == "video"
    assert wan.base_model == "ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16"
    assert wan.gpu_class == "24gb" and wan.min_vram_gb == 24
    assert wan.quantize is True and wan.low_vram is True
    assert model["qtype"] == "uint4|ostris/accuracy_recovery_adapters/wan22_14b_t2i_torchao_uint4.safetensors"
    assert model["model_kwargs"] == {"train_high_noise": True, "train_low_noise": True}
    assert train["switch_boundary_every"] == 10
    assert train["cache_text_embeddings"] is True


def test_qwen_image_fits_24gb_with_uint3_ara(presets: dict[str, Preset]) -> None:
    # Given the Qwen-Image preset
    qwen = presets["qwen-image"]

    # When its model options are read
    # Then it is the 24 GB recipe: uint3 with the accuracy-recovery adapter, low_vram and cached text embeddings
    assert qwen.gpu_class == "24gb" and qwen.quantize is True and qwen.low_vram is True
    assert qwen.engine_options["model"]["qtype"] == "uint3|ostris/accuracy_recovery_adapters/qwen_image_torchao_uint3.safetensors"
    assert qwen.engine_options["train"]["cache_text_embeddings"] is True


def test_quantized_24gb_presets_are_marked_quantized(presets: dict[str, Preset]) -> None:
    # Given the large DiTs that AI-Toolkit trains on 24 GB only when quantized
    # When their quantize flag is read
    # Then it is set
    for pid in ("flux-dev", "flux-schnell", "sd35-large", "wan22-14b", "zimage-turbo", "qwen-image", "chroma"):
        assert presets[pid].quantize is True, pid
        assert presets[pid].gpu_class == "24gb", pid


def test_tiny_sd_is_the_cpu_diffusers_preset(presets: dict[str, Preset]) -> None:
    # Given the local default preset
    tiny = presets["tiny-sd"]

    # When it is read
    # Then it runs on CPU with the diffusers engine, with defaults that finish in seconds
    assert tiny.engine == Engine.DIFFUSERS
    assert tiny.gpu_class == "cpu" and tiny.min_vram_gb == 0
    assert tiny.base_model == "tiny-sd" and tiny.arch is None
    assert tiny.defaults.optimizer == Optimizer.ADAMW
    assert (tiny.defaults.rank, tiny.defaults.alpha, tiny.defaults.batch_size, tiny.defaults.resolution) == (8, 8, 4, 64)
    assert tiny.defaults.learning_rate == pytest.approx(1e-2)
    assert tiny.startup_seconds + tiny.defaults.steps * tiny.seconds_per_step < 10
    assert (tiny.min_images, tiny.min_side, tiny.recommended_resolution, tiny.checkpoint_every) == (4, 32, 64, 10)


def test_presets_are_internally_coherent(presets: dict[str, Preset]) -> None:
    # Given every preset
    for preset in presets.values():
        # When its numbers are compared with one another
        # Then they agree: a known GPU class, recommended ≥ minimum, a checkpoint before the end, VRAM within the class
        assert preset.gpu_class in GPU_CLASSES, preset.id
        assert preset.recommended_images >= preset.min_images, preset.id
        assert preset.min_side <= preset.recommended_resolution, preset.id
        assert preset.checkpoint_every <= preset.defaults.steps, preset.id
        assert preset.bounds["resolution"].min >= preset.min_side, preset.id
        if preset.gpu_class != "cpu":
            assert 0 < preset.min_vram_gb <= int(preset.gpu_class.removesuffix("gb")), preset.id
        assert preset.sources, preset.id


def test_sample_settings_are_complete(presets: dict[str, Preset]) -> None:
    # Given every preset
    for preset in presets.values():
        settings = preset.sample_settings

        # When its sample settings and default prompts are read
        # Then the keys the engines need are there, neg is "" (False crashes SD1.x), prompts use [trigger]
        assert {"sampler", "guidance_scale", "sample_steps", "width", "height"} <= set(settings), preset.id
        assert settings["neg"] == "", preset.id
        assert preset.default_sample_prompts and all("[trigger]" in p for p in preset.default_sample_prompts), preset.id
        if preset.modality == "video":
            assert settings["num_frames"] > 1 and settings["fps"] > 0, preset.id


def test_no_number_is_left_as_a_string() -> None:
    # Given the raw YAML (PyYAML reads "1e-4" as a string)
    raw = _raw_file()

    # When every string value in it is collected
    numeric = [s for s in _strings(raw) if NUMERIC_STRING.match(s)]

    # Then none of them is a number in disguise
    assert numeric == []


# ───────────────────────── broken files ─────────────────────────


def test_loader_accepts_a_minimal_valid_file(tmp_path: Path) -> None:
    # Given a file holding only the tiny-sd preset
    path = _write(tmp_path, [_raw_preset("tiny-sd")])

    # When it is loaded
    loaded = load_presets(path)

    # Then it holds that one preset
    assert list(loaded) == ["tiny-sd"]


def test_loader_refuses_a_default_out_of_bounds(tmp_path: Path) -> None:
    # Given a preset whose default rank is valid in general but above the preset's own bound
    preset = _raw_preset("tiny-sd")
    preset["defaults"]["rank"] = 128
    preset["bounds"]["rank"] = {"min": 1, "max": 64}
    path = _write(tmp_path, [preset])

    # When it is loaded
    # Then it is refused, naming the preset and the field
    with pytest.raises(ValidationError, match=r"tiny-sd: default rank=128 outside \[1(\.0)?, 64(\.0)?\]"):
        load_presets(path)


def test_loader_refuses_a_bound_for_an_unknown_field(tmp_path: Path) -> None:
    # Given a preset with a bound for a field that is not a hyperparameter
    preset = _raw_preset("tiny-sd")
    preset["bounds"]["epochs"] = {"min": 1, "max": 10}
    path = _write(tmp_path, [preset])

    # When it is loaded
    # Then it is refused, naming the field
    with pytest.raises(ValidationError, match=r"bounds for unknown fields: \['epochs'\]"):
        load_presets(path)


def test_loader_refuses_a_missing_bound(tmp_path: Path) -> None:
    # Given a preset without a bound for steps
    preset = _raw_preset("tiny-sd")
    del preset["bounds"]["steps"]
    path = _write(tmp_path, [preset])

    # When it is loaded
    # Then it is refused
    with pytest.raises(ValidationError, match="has no bound for steps"):
        load_presets(path)


def test_loader_refuses_duplicate_ids(tmp_path: Path) -> None:
    # Given two presets with the same id
    path = _write(tmp_path, [_raw_preset("tiny-sd"), _raw_preset("tiny-sd")])

    # When the file is loaded
    # Then it is refused
    with pytest.raises(ValidationError, match="duplicate preset ids"):
        load_presets(path)


def test_loader_refuses_an_unknown_key(tmp_path: Path) -> None:
    # Given a preset with a misspelt key
    preset = _raw_preset("tiny-sd")
    preset["seconds_per_stepp"] = 1.0
    path = _write(tmp_path, [preset])

    # When it is loaded
    # Then it is refused, naming the key
    with pytest.raises(ValidationError, match="seconds_per_stepp"):
        load_presets(path)


def test_loader_refuses_an_unknown_engine(tmp_path: Path) -> None:
    # Given a preset naming an engine that does not exist
    preset = _raw_preset("tiny-sd")
    preset["engine"] = "kohya"
    path = _write(tmp_path, [preset])

    # When it is loaded
    # Then it is refused
    with pytest.raises(ValidationError, match="engine"):
        load_presets(path)


# ───────────────────────── get_preset / resolve_hyperparameters ─────────────────────────


def test_get_preset_returns_the_preset() -> None:
    # Given a known id
    # When it is looked up
    preset = get_preset("flux-dev")

    # Then that preset comes back
    assert preset.id == "flux-dev" and preset.arch == "flux"


def test_get_preset_refuses_an_unknown_id() -> None:
    # Given an id no preset has
    # When it is looked up
    with pytest.raises(InvalidInput) as caught:
        get_preset("nope")

    # Then the error is UNKNOWN_PRESET and lists the known ids
    assert caught.value.code == "UNKNOWN_PRESET"
    assert "flux-dev" in caught.value.details["known"] and "tiny-sd" in caught.value.details["known"]


def test_resolve_without_overrides_gives_the_defaults() -> None:
    # Given a preset
    preset = get_preset("sdxl")

    # When nothing is overridden
    resolved = resolve_hyperparameters(preset, None)

    # Then the result is the preset's defaults
    assert resolved == preset.defaults


def test_resolve_applies_overrides_on_top_of_defaults() -> None:
    # Given a preset and a partial override, as a dict and as a model
    preset = get_preset("flux-dev")
    overrides = {"steps": 1500, "rank": 32, "optimizer": "prodigy", "learning_rate": 1.0}

    # When they are resolved
    from_dict = resolve_hyperparameters(preset, overrides)
    from_model = resolve_hyperparameters(preset, HyperparameterOverrides(**overrides))

    # Then the overridden fields change and the others keep their defaults
    assert from_dict == from_model
    assert (from_dict.steps, from_dict.rank, from_dict.optimizer, from_dict.learning_rate) == (1500, 32, Optimizer.PRODIGY, 1.0)
    assert from_dict.alpha == preset.defaults.alpha
    assert from_dict.resolution == preset.defaults.resolution
    assert isinstance(from_dict, Hyperparameters)


def test_resolve_accepts_values_on_the_bounds() -> None:
    # Given values exactly on a preset's bounds
    preset = get_preset("tiny-sd")
    edges = {"steps": int(preset.bounds["steps"].max), "rank": int(preset.bounds["rank"].min)}

    # When they are resolved
    resolved = resolve_hyperparameters(preset, edges)

    # Then they are accepted
    assert (resolved.steps, resolved.rank) == (edges["steps"], edges["rank"])


def test_resolve_refuses_values_out_of_the_preset_bounds() -> None:
    # Given values valid in general but outside this preset's bounds
    preset = get_preset("tiny-sd")

    # When they are resolved
    with pytest.raises(InvalidInput) as caught:
        resolve_hyperparameters(preset, {"steps": 5000, "resolution": 1024})

    # Then the error is HYPERPARAMETER_OUT_OF_BOUNDS and names each field with its range
    assert caught.value.code == "HYPERPARAMETER_OUT_OF_BOUNDS"
    fields = {d["field"]: d for d in caught.value.details}
    assert set(fields) == {"steps", "resolution"}
    assert fields["steps"]["max"] == preset.bounds["steps"].max and fields["steps"]["value"] == 5000
    assert "steps" in caught.value.message and "resolution" in caught.value.message


@pytest.mark.parametrize("steps", [0, -5])
def test_resolve_refuses_zero_or_negative_steps(steps: int) -> None:
    # Given zero or negative steps
    preset = get_preset("tiny-sd")

    # When they are resolved
    with pytest.raises(InvalidInput) as caught:
        resolve_hyperparameters(preset, {"steps": steps})

    # Then the error is INVALID_HYPERPARAMETERS and points at steps
    assert caught.value.code == "INVALID_HYPERPARAMETERS"
    assert any("steps" in d["loc"] for d in caught.value.details)


def test_resolve_refuses_unknown_fields() -> None:
    # Given a field that is not a hyperparameter
    preset = get_preset("tiny-sd")

    # When it is resolved
    with pytest.raises(InvalidInput) as caught:
        resolve_hyperparameters(preset, {"epochs": 3})

    # Then the error is INVALID_HYPERPARAMETERS and names the field
    assert caught.value.code == "INVALID_HYPERPARAMETERS"
    assert any("epochs" in d["loc"] for d in caught.value.details)


def test_every_preset_resolves_its_own_defaults(presets: dict[str, Preset]) -> None:
    # Given every preset
    for preset in presets.values():
        # When its defaults are resolved with no override
        # Then they pass its bounds unchanged
        assert resolve_hyperparameters(preset, {}) == preset.defaults


# ───────────────────────── build_training_spec ─────────────────────────


def test_spec_uses_the_preset_cadence_and_replaces_the_trigger() -> None:
    # Given a preset and its defaults
    preset = get_preset("flux-dev")
    hp = resolve_hyperparameters(preset, None)

    # When a spec is built with a trigger word and no sample/checkpoint options
    spec = build_training_spec(preset, hp, trigger_word="sks_dog")

    # Then checkpoints and samples follow the preset cadence and [trigger] becomes the trigger word
    assert spec.checkpoint_every == preset.checkpoint_every == 250
    assert spec.sample_every == 250
    assert spec.samples.prompts == [p.replace("[trigger]", "sks_dog") for p in preset.default_sample_prompts]
    assert all("[trigger]" not in p for p in spec.samples.prompts)
    assert spec.default_caption == "sks_dog" and spec.trigger_word == "sks_dog"
    assert (spec.arch, spec.base_model, spec.noise_scheduler, spec.quantize) == ("flux", "black-forest-labs/FLUX.1-dev", "flowmatch", True)
    assert spec.engine_options == preset.engine_options and spec.sample_settings == preset.sample_settings


def test_spec_carries_the_adapter_and_arch_options() -> None:
    # Given the Wan 2.2 and Z-Image Turbo presets
    wan = get_preset("wan22-14b")
    zimage = get_preset("zimage-turbo")

    # When specs are built
    wan_spec = build_training_spec(wan, resolve_hyperparameters(wan, None))
    zimage_spec = build_training_spec(zimage, resolve_hyperparameters(zimage, None))

    # Then the arch-specific keys reach the worker
    assert wan_spec.modality == "video" and wan_spec.low_vram is True
    assert wan_spec.engine_options["train"]["switch_boundary_every"] == 10
    assert zimage_spec.assistant_lora_path == zimage.assistant_lora_path


def test_spec_cadence_is_clamped_to_the_steps() -> None:
    # Given a run shorter than the preset's checkpoint interval
    preset = get_preset("tiny-sd")
    hp = resolve_hyperparameters(preset, {"steps": 6})

    # When a spec is built
    spec = build_training_spec(preset, hp)

    # Then there is still a checkpoint and a sample at the last step
    assert spec.checkpoint_every == 6 and spec.sample_every == 6


def test_spec_honours_the_user_cadence_and_prompts() -> None:
    # Given user checkpoint and sample options
    preset = get_preset("tiny-sd")
    hp = resolve_hyperparameters(preset, None)

    # When a spec is built with them
    spec = build_training_spec(
        preset, hp, trigger_word="zxq",
        samples=SampleOptions(prompts=["my own prompt"], every=15), checkpoints=CheckpointOptions(every=5, keep=2),
    )

    # Then the user's cadence and prompts win over the preset's
    assert spec.checkpoint_every == 5 and spec.sample_every == 15
    assert spec.samples.prompts == ["my own prompt"]
    assert spec.checkpoints.keep == 2


def test_spec_without_trigger_word_drops_the_placeholder() -> None:
    # Given no trigger word
    preset = get_preset("tiny-sd")

    # When a spec is built
    spec = build_training_spec(preset, resolve_hyperparameters(preset, None))

    # Then the placeholder is removed, not left in the prompts
    assert spec.samples.prompts == ["a photo of"]
    assert spec.trigger_word is None and spec.default_caption is None


def test_the_compiled_presets_match_the_yaml_source():
    # Given presets.yaml (the commented source) and presets.json (what the functions read)
    from loraforge.presets import COMPILED_PRESETS_FILE, compile_presets

    # When the source is compiled again / Then it is byte-for-byte the committed JSON (else: run `make presets`)
    assert COMPILED_PRESETS_FILE.read_text() == compile_presets(), "presets.json is stale: run `make presets` and commit it"


def test_the_functions_read_the_same_presets_as_the_yaml_says(tmp_path):
    # Given the default loader (compiled JSON) and the YAML loaded explicitly
    from loraforge.presets import PRESETS_FILE

    compiled = load_presets()
    load_presets.cache_clear()
    try:
        from_yaml = load_presets(str(PRESETS_FILE))
    finally:
        load_presets.cache_clear()
    # Then both give identical presets
    assert compiled == from_yaml
