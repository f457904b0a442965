"""AI-Toolkit config generation for every preset family, checked against reference/ai-toolkit.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraforge.contract import Engine
from loraforge.models.job import CheckpointOptions, SampleOptions
from loraforge.presets import build_training_spec, get_preset, load_presets, resolve_hyperparameters
from loraforge_worker.engines.ai_toolkit import AiToolkitEngine, ConfigError, resolution_buckets
from loraforge_worker.engines.base import RunLayout

AI_TOOLKIT_PRESETS = sorted(p.id for p in load_presets().values() if p.engine == Engine.AI_TOOLKIT)
DIT_FAMILIES = {"flux1", "sd35", "wan21", "wan22", "zimage", "qwen-image", "chroma"}
EXPECTED_ARCH = {"flux-dev": "flux", "flux-schnell": "flux", "sdxl": "sdxl", "sd15": "sd1", "sd35-large": "sd3", "wan21-1.3b": "wan21",
                 "wan22-14b": "wan22_14b", "zimage-turbo": "zimage", "qwen-image": "qwen_image", "chroma": "chroma"}
LAYOUT = RunLayout(root=Path("/work/job_abc-a2-1234"), name="job_abc")


def render(preset_id: str, **kwargs) -> dict:
    preset = get_preset(preset_id)
    spec = build_training_spec(preset, resolve_hyperparameters(preset, kwargs.pop("overrides", {})), **kwargs)
    text = AiToolkitEngine(toolkit_dir="/app/ai-toolkit").render_spec(spec, LAYOUT)
    return yaml.safe_load(text)


def test_every_family_has_an_ai_toolkit_preset():
    assert set(EXPECTED_ARCH) == set(AI_TOOLKIT_PRESETS)


@pytest.mark.parametrize("preset_id", AI_TOOLKIT_PRESETS)
def test_config_has_the_documented_keys_for_every_family(preset_id):
    # Given a preset with a trigger word, when its config is rendered
    preset = get_preset(preset_id)
    config = render(preset_id, trigger_word="ohwx")
    process = config["config"]["process"][0]

    # Then it is an extension job with one sd_trainer process named after the run
    assert config["job"] == "extension" and config["config"]["name"] == "job_abc"
    assert process["type"] == "sd_trainer"
    # the model: arch + name_or_path, quantize settings from the preset
    assert process["model"]["arch"] == EXPECTED_ARCH[preset_id]
    assert process["model"]["name_or_path"] == preset.base_model
    assert process["model"]["quantize"] is preset.quantize and process["model"]["low_vram"] is preset.low_vram
    # flowmatch for the DiT families, ddpm for the UNet ones; the sampler matches
    expected_scheduler = "flowmatch" if preset.family in DIT_FAMILIES else "ddpm"
    assert process["train"]["noise_scheduler"] == expected_scheduler == process["sample"]["sampler"]
    # an explicit learning rate (the default 1e-6 trains nothing) and the resolved knobs
    hp = preset.defaults
    assert process["train"]["lr"] == hp.learning_rate and process["train"]["steps"] == hp.steps
    assert process["train"]["optimizer"] == hp.optimizer.value and process["train"]["batch_size"] == hp.batch_size
    assert process["network"]["linear"] == hp.rank and process["network"]["linear_alpha"] == hp.alpha
    # neg "" (False crashes SD1.x sampling), prompts with the trigger word
    assert process["sample"]["neg"] == ""
    assert process["sample"]["prompts"] and all("ohwx" in p for p in process["sample"]["prompts"])
    assert process["trigger_word"] == "ohwx"
    # a fresh training folder per attempt and the private dataset copy
    assert process["training_folder"] == "/work/job_abc-a2-1234/output"
    (dataset,) = process["datasets"]
    assert dataset["folder_path"] == "/work/job_abc-a2-1234/dataset" and dataset["caption_ext"] == "txt"
    assert dataset["resolution"] == resolution_buckets(hp.resolution)
    # saves every checkpoint_every steps, keeping the asked number
    assert process["save"]["save_every"] == preset.checkpoint_every
    assert process["save"]["max_step_saves_to_keep"] == CheckpointOptions().keep
    assert process["sample"]["sample_every"] == preset.checkpoint_every


@pytest.mark.parametrize(("preset_id", "adapter"), [
    ("flux-schnell", "ostris/FLUX.1-schnell-training-adapter"),
    ("zimage-turbo", "ostris/zimage_turbo_training_adapter/zimage_turbo_training_adapter_v2.safetensors"),
])
def test_schnell_and_zimage_turbo_train_with_their_assistant_adapter(preset_id, adapter):
    model = render(preset_id)["config"]["process"][0]["model"]
    assert model["assistant_lora_path"] == adapter
    assert "training_adapter" not in model  # the key AI-Toolkit silently ignores (#1027)


@pytest.mark.parametrize("preset_id", ["flux-dev", "sdxl", "sd15", "sd35-large", "chroma", "qwen-image", "wan21-1.3b"])
def test_models_without_an_adapter_get_no_assistant_lora(preset_id):
    assert "assistant_lora_path" not in render(preset_id)["config"]["process"][0]["model"]


def test_engine_options_deep_merge_into_sections_and_null_removes_a_key():
    # Wan 2.2: quantization with an accuracy-recovery adapter, model kwargs, video frames; DiT: no conv LoRA
    process = render("wan22-14b")["config"]["process"][0]
    assert process["model"]["qtype"].startswith("uint4|ostris/accuracy_recovery_adapters/")
    assert process["model"]["model_kwargs"] == {"train_high_noise": True, "train_low_noise": True}
    assert process["train"]["switch_boundary_every"] == 10
    assert process["datasets"][0]["num_frames"] == 1
    assert process["sample"]["num_frames"] == 41 and process["sample"]["fps"] == 16
    assert "conv" not in process["network"]
    # SD1.5 keeps its conv layers
    assert render("sd15")["config"]["process"][0]["network"]["conv"] == 16


def test_user_overrides_and_sample_options_reach_the_config():
    config = render("flux-dev", overrides={"steps": 1500, "learning_rate": 2e-4, "rank": 32, "resolution": 768},
                    trigger_word="zxc", samples=SampleOptions(prompts=["a [trigger] on a beach"], every=100),
                    checkpoints=CheckpointOptions(every=300, keep=2))
    process = config["config"]["process"][0]
    assert process["train"]["steps"] == 1500 and process["train"]["lr"] == 2e-4 and process["network"]["linear"] == 32
    assert process["datasets"][0]["resolution"] == [512, 768]
    assert process["sample"]["prompts"] == ["a zxc on a beach"] and process["sample"]["sample_every"] == 100
    assert process["save"]["save_every"] == 300 and process["save"]["max_step_saves_to_keep"] == 2


def test_without_a_trigger_word_the_placeholder_is_dropped_from_prompts():
    prompts = render("sdxl", samples=SampleOptions(prompts=["[trigger], a portrait"]))["config"]["process"][0]["sample"]["prompts"]
    assert prompts == ["a portrait"]


def test_a_config_never_carries_an_env_placeholder_that_ai_toolkit_would_expand():
    # AI-Toolkit replaces ${VAR} in config files from the environment (HF_TOKEN…) and echoes the config to the log
    with pytest.raises(ConfigError, match=r"\$\{"):
        render("flux-dev", samples=SampleOptions(prompts=["photo of ${HF_TOKEN}"]))


def test_resolution_buckets_follow_the_examples():
    assert resolution_buckets(1024) == [512, 768, 1024]
    assert resolution_buckets(512) == [512]
    assert resolution_buckets(640) == [512, 640]
    assert resolution_buckets(256) == [256]


def test_command_runs_run_py_in_the_toolkit_folder_with_the_seed():
    preset = get_preset("sd15")
    spec = build_training_spec(preset, resolve_hyperparameters(preset, {"seed": 7}))
    run = AiToolkitEngine(toolkit_dir="/app/ai-toolkit", python="/usr/bin/python3").command(Path("/c/job.yaml"), LAYOUT, spec)
    assert run.argv == ["/usr/bin/python3", "run.py", "/c/job.yaml"]
    assert run.cwd == Path("/app/ai-toolkit") and run.env["SEED"] == "7"
