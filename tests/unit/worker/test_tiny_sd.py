"""The tiny-sd base model: built from config alone (no download), deterministic, cached on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraforge_worker.engines.tiny_sd import cache_key, ensure_tiny_sd, is_tiny_sd, resolve_config

pytestmark = pytest.mark.slow


def test_two_builds_on_different_machines_give_identical_models(tmp_path: Path):
    from safetensors.torch import load_file

    # Given two empty caches (two machines), when each builds the model
    first = ensure_tiny_sd(None, tmp_path / "a")
    second = ensure_tiny_sd(None, tmp_path / "b")

    # Then both are complete diffusers folders with identical weights and tokenizer
    for component in ("unet", "vae", "text_encoder"):
        (a_file,) = (first / component).glob("*.safetensors")
        (b_file,) = (second / component).glob("*.safetensors")
        a, b = load_file(str(a_file)), load_file(str(b_file))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (first / "tokenizer" / "tokenizer.json").read_text() == (second / "tokenizer" / "tokenizer.json").read_text()


def test_the_cache_is_reused_and_keyed_by_config(tmp_path: Path):
    built = ensure_tiny_sd(None, tmp_path)
    stamp = (built / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_sd({"text_layers": 2}, tmp_path) == built  # same config: the same folder, not rebuilt
    assert (built / "model_index.json").stat().st_mtime_ns == stamp
    assert cache_key(resolve_config({"text_layers": 3})) != cache_key(resolve_config(None))
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary folders left behind


def test_unknown_config_keys_are_refused_and_only_tiny_ids_are_built():
    with pytest.raises(ValueError, match="unknown tiny_model keys"):
        resolve_config({"unet_channels": 3})
    assert is_tiny_sd("tiny-sd") and not is_tiny_sd("stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_the_tokenizer_encodes_any_caption(tmp_path: Path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(ensure_tiny_sd(None, tmp_path), subfolder="tokenizer")
    ids = tokenizer("a photo of sks, a red circle — ünïcode", truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 1 and len(ids) == 16 == tokenizer.model_max_length
    assert 1 not in ids[1:-1]  # byte-level symbols cover every character: nothing falls back to the unknown token
    assert tokenizer.decode(tokenizer("a red circle")["input_ids"], skip_special_tokens=True) == "a red circle"
