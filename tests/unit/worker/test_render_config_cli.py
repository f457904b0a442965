"""`loraforge worker render-config` prints the exact engine config the worker would run."""

from __future__ import annotations

import json

import yaml

from loraforge.cli.main import main


def test_ai_toolkit_preset_renders_its_yaml_with_overrides_and_trigger(capsys):
    assert main(["worker", "render-config", "--preset", "flux-schnell", "--param", "steps=1500", "--param", "rank=32",
                 "--trigger-word", "ohwx"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    process = config["config"]["process"][0]
    assert process["train"]["steps"] == 1500 and process["network"]["linear"] == 32
    assert process["model"]["assistant_lora_path"] == "ostris/FLUX.1-schnell-training-adapter"
    assert all("ohwx" in p for p in process["sample"]["prompts"])


def test_diffusers_preset_renders_the_trainer_json(capsys):
    assert main(["worker", "render-config", "--preset", "tiny-sd", "--param", "learning_rate=0.005"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["learning_rate"] == 0.005 and config["base_model"]["tiny_sd"]["vae_blocks"] == 4


def test_errors_are_one_line_with_a_code(capsys):
    assert main(["worker", "render-config", "--preset", "nope"]) == 1
    assert capsys.readouterr().err.startswith("UNKNOWN_PRESET:")
    assert main(["worker", "render-config", "--preset", "tiny-sd", "--param", "steps=99999"]) == 1
    assert capsys.readouterr().err.startswith("HYPERPARAMETER_OUT_OF_BOUNDS:")
