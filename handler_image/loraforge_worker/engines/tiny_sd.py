"""The `tiny-sd` base model: a Stable-Diffusion-architecture pipeline with random weights, built
deterministically from config (reference/cpu-tiny-training.md Part A) and cached on disk.

Nothing is downloaded. The same config always yields the same tensors (fixed seed, fixed
construction order, a hand-built tokenizer vocabulary), so a LoRA trained on one machine loads
onto the model built on another. The cache key is a hash of the config and the builder version;
concurrent builders write to private temporary folders and the first rename wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

BUILDER_VERSION = 1
BUILD_SEED = 0
TINY_SD_IDS = frozenset({"tiny-sd", "loraforge/tiny-sd"})
ENV_MODEL_CACHE = "LORAFORGE_MODEL_CACHE"

DEFAULT_TINY_MODEL: dict[str, Any] = {
    "unet_block_out_channels": [32, 64],
    "unet_layers_per_block": 1,
    "unet_cross_attention_dim": 32,
    "unet_attention_head_dim": 8,
    "vae_blocks": 4,
    "vae_block_channels": 32,
    "text_hidden_size": 32,
    "text_layers": 2,
    "text_heads": 4,
    "text_max_position_embeddings": 16,
}

# Words that get BPE merge chains in the hand-built vocabulary (a more compact encoding of common caption
# words). Any other text still tokenizes, one byte-level symbol at a time: the vocabulary only decides how
# compactly captions are encoded, never whether they can be.
VOCAB_WORDS = (
    "a an the of in on at with and or to by for from photo picture image portrait painting drawing render "
    "style close up closeup full body face person man woman boy girl child dog cat bird car house tree "
    "flower sky city street night day light dark bright soft studio background white black red green blue "
    "yellow orange purple pink brown gray grey circle square triangle shape sks ohwx tok character object"
).split()


def is_tiny_sd(base_model: str) -> bool:
    return base_model in TINY_SD_IDS


def default_cache_root() -> Path:
    return Path(os.environ.get(ENV_MODEL_CACHE) or Path.home() / ".cache" / "loraforge" / "models")


def resolve_config(tiny_model: dict[str, Any] | None) -> dict[str, Any]:
    unknown = set(tiny_model or {}) - set(DEFAULT_TINY_MODEL)
    if unknown:
        raise ValueError(f"unknown tiny_model keys: {sorted(unknown)}")
    return DEFAULT_TINY_MODEL | dict(tiny_model or {})


def cache_key(config: dict[str, Any]) -> str:
    blob = json.dumps({"config": config, "version": BUILDER_VERSION, "seed": BUILD_SEED}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_dir(tiny_model: dict[str, Any] | None = None, cache_root: Path | None = None) -> Path:
    return (cache_root or default_cache_root()) / f"tiny-sd-{cache_key(resolve_config(tiny_model))}"


def ensure_tiny_sd(tiny_model: dict[str, Any] | None = None, cache_root: Path | None = None) -> Path:
    """The folder of the built pipeline (diffusers layout), building it on first use."""
    config = resolve_config(tiny_model)
    target = model_dir(config, cache_root)
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        build_pipeline(config).save_pretrained(scratch)
        (scratch / "loraforge_tiny_sd.json").write_text(json.dumps({"config": config, "version": BUILDER_VERSION}, indent=2))
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def build_tokenizer(max_length: int) -> Any:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in alphabet:
        vocab.setdefault(symbol, len(vocab))
    for symbol in alphabet:
        vocab.setdefault(symbol + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in VOCAB_WORDS:
        if len(word) < 2:
            continue
        current = word[0]
        for i, char in enumerate(word[1:], start=1):
            piece = char + ("</w>" if i == len(word) - 1 else "")
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    return CLIPTokenizer(
        vocab=vocab, merges=merges, unk_token="<|endoftext|>", bos_token="<|startoftext|>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=max_length,
    )


def build_pipeline(config: dict[str, Any]) -> Any:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer(config["text_max_position_embeddings"])
    torch.manual_seed(BUILD_SEED)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        block_out_channels=tuple(config["unet_block_out_channels"]),
        layers_per_block=config["unet_layers_per_block"],
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=config["unet_cross_attention_dim"],
        attention_head_dim=config["unet_attention_head_dim"],
    )
    torch.manual_seed(BUILD_SEED + 1)
    blocks = config["vae_blocks"]
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=8 * 2 ** (blocks - 1),
        block_out_channels=(config["vae_block_channels"],) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
    )
    torch.manual_seed(BUILD_SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config["text_hidden_size"], intermediate_size=config["text_hidden_size"] * 2,
        num_hidden_layers=config["text_layers"], num_attention_heads=config["text_heads"],
        max_position_embeddings=config["text_max_position_embeddings"], bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
