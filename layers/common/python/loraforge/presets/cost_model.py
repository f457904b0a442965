"""Time, cost and VRAM estimate of a training job before launch (DESIGN §4, §6 `POST /v1/estimates`, §8).

The model is deliberately simple and documented here, so that users, dispatch and tests agree on it:

Time
    seconds = startup_seconds + steps × seconds_per_step × batch_factor × resolution_factor

    - `seconds_per_step` and `startup_seconds` come from the preset: measured or estimated at the preset's
      default batch and resolution on its reference GPU (presets.yaml says which, and why).
    - batch_factor = (batch_size × gradient_accumulation) / (default batch_size × default gradient_accumulation):
      the work per optimizer step is linear in the number of samples it sees.
    - resolution_factor = (resolution / default resolution)², the pixel-count ratio, but never below
      `MIN_RESOLUTION_FACTOR` (0.25): per-step overheads (optimizer step, LoRA hooks, data loading) do not
      shrink with the image, and an estimate that is too short would also make the RunPod timeout too short.

Cost
    cost_usd = seconds × gpu_price_per_second (the GPU class's price parameter; RunPod bills per second).

VRAM
    vram_gb = ceil(min_vram_gb × (1 + ACTIVATION_SHARE × (load − 1))) when load > 1, else min_vram_gb,
    where load = (batch_size / default batch_size) × (resolution / default resolution)².

    `min_vram_gb` is the need at the preset defaults. With gradient checkpointing on, activations are about a
    quarter of it (`ACTIVATION_SHARE`) and grow linearly with batch × pixels; the weights, text encoders and
    optimizer state do not. Gradient accumulation costs no VRAM. The figure is never adjusted below the
    preset's minimum (a smaller batch or resolution does not make a quantized 12B model fit in less).

Warnings are stable strings `CODE: message`, in this order, each only when its condition holds:
    TOO_FEW_IMAGES         image_count < recommended_images (also below min_images, which is refused elsewhere)
    UPSCALING              resolution > the dataset's smallest image side
    STEPS_FAR_FROM_DEFAULT steps < 0.25 × default or steps > 4 × default
    LEARNING_RATE_HIGH     learning_rate > 10 × default (not for prodigy, whose lr is a multiplier, 1.0 by convention)
    RANK_HIGH              rank > 64 on a GPU class of 24 GB or less
    VRAM_ABOVE_GPU_CLASS   vram_gb above the memory of the GPU class (e.g. 24 for "24gb")
"""

from __future__ import annotations

import math
import re

from ..models.job import Estimate, Hyperparameters, Optimizer
from . import Preset

ACTIVATION_SHARE = 0.25
MIN_RESOLUTION_FACTOR = 0.25
STEPS_LOW_FACTOR = 0.25
STEPS_HIGH_FACTOR = 4.0
LEARNING_RATE_HIGH_FACTOR = 10.0
RANK_HIGH = 64
SMALL_GPU_CLASS_GB = 24

TIMEOUT_FACTOR = 1.5
TIMEOUT_HEADROOM_SECONDS = 10 * 60
# RunPod policy.executionTimeout accepts 5 s to 7 days (reference/runpod.md §0, §3).
RUNPOD_MIN_EXECUTION_TIMEOUT_SECONDS = 5
RUNPOD_MAX_EXECUTION_TIMEOUT_SECONDS = 7 * 24 * 3600

_GPU_CLASS = re.compile(r"^(\d+)gb$")


def gpu_class_memory_gb(gpu_class: str) -> int | None:
    """GPU memory of a class named like `24gb`; None for `cpu` or a name that carries no size."""
    match = _GPU_CLASS.match(gpu_class.strip().lower())
    return int(match.group(1)) if match else None


def batch_factor(preset: Preset, hyperparameters: Hyperparameters) -> float:
    samples = hyperparameters.batch_size * hyperparameters.gradient_accumulation
    default_samples = preset.defaults.batch_size * preset.defaults.gradient_accumulation
    return samples / default_samples


def resolution_factor(preset: Preset, hyperparameters: Hyperparameters) -> float:
    ratio = (hyperparameters.resolution / preset.defaults.resolution) ** 2
    return max(ratio, MIN_RESOLUTION_FACTOR)


def seconds_per_step(preset: Preset, hyperparameters: Hyperparameters) -> float:
    """Expected seconds per optimizer step for these hyperparameters on the preset's reference GPU."""
    return preset.seconds_per_step * batch_factor(preset, hyperparameters) * resolution_factor(preset, hyperparameters)


def vram_gb(preset: Preset, hyperparameters: Hyperparameters) -> int:
    load = (hyperparameters.batch_size / preset.defaults.batch_size) * (hyperparameters.resolution / preset.defaults.resolution) ** 2
    if load <= 1:
        return preset.min_vram_gb
    return math.ceil(preset.min_vram_gb * (1 + ACTIVATION_SHARE * (load - 1)))


def _warnings(
    preset: Preset,
    hp: Hyperparameters,
    *,
    image_count: int | None,
    min_image_side: int | None,
    gpu_class: str,
    vram: int,
) -> list[str]:
    found: list[str] = []
    if image_count is not None and image_count < preset.recommended_images:
        if image_count < preset.min_images:
            found.append(
                f"TOO_FEW_IMAGES: {image_count} images; preset '{preset.id}' needs at least {preset.min_images} "
                f"(the job will be refused) and recommends {preset.recommended_images} or more"
            )
        else:
            found.append(f"TOO_FEW_IMAGES: {image_count} images; preset '{preset.id}' recommends {preset.recommended_images} or more")
    if min_image_side is not None and hp.resolution > min_image_side:
        found.append(
            f"UPSCALING: training resolution {hp.resolution} px is above the smallest image side ({min_image_side} px), "
            f"so small images will be upscaled; use larger images or a resolution of at most {min_image_side}"
        )
    default_steps = preset.defaults.steps
    if hp.steps < STEPS_LOW_FACTOR * default_steps:
        found.append(
            f"STEPS_FAR_FROM_DEFAULT: {hp.steps} steps is below {STEPS_LOW_FACTOR:g}x the preset default ({default_steps}); "
            "the LoRA is likely to be undertrained"
        )
    elif hp.steps > STEPS_HIGH_FACTOR * default_steps:
        found.append(
            f"STEPS_FAR_FROM_DEFAULT: {hp.steps} steps is above {STEPS_HIGH_FACTOR:g}x the preset default ({default_steps}); "
            "the LoRA is likely to overfit, and time and cost grow with steps"
        )
    default_lr = preset.defaults.learning_rate
    if hp.optimizer != Optimizer.PRODIGY and hp.learning_rate > LEARNING_RATE_HIGH_FACTOR * default_lr:
        found.append(
            f"LEARNING_RATE_HIGH: learning rate {hp.learning_rate:g} is more than {LEARNING_RATE_HIGH_FACTOR:g}x the preset default "
            f"({default_lr:g}); training is likely to diverge"
        )
    memory = gpu_class_memory_gb(gpu_class)
    if memory is not None and memory <= SMALL_GPU_CLASS_GB and hp.rank > RANK_HIGH:
        found.append(
            f"RANK_HIGH: rank {hp.rank} is above {RANK_HIGH} on the {gpu_class} GPU class; it adds VRAM use and the risk of "
            "running out of memory, and 16–32 is usually enough"
        )
    if memory is not None and vram > memory:
        found.append(
            f"VRAM_ABOVE_GPU_CLASS: about {vram} GB needed at batch {hp.batch_size} and {hp.resolution} px, more than the "
            f"{memory} GB of the {gpu_class} GPU class; the job is likely to fail with GPU_OOM: lower batch_size or resolution"
        )
    return found


def estimate(
    preset: Preset,
    hyperparameters: Hyperparameters,
    *,
    image_count: int | None,
    min_image_side: int | None,
    gpu_price_per_second: float,
    gpu_class: str,
) -> Estimate:
    """Time, cost, VRAM and warnings for training `preset` with resolved `hyperparameters` (see the module docstring)."""
    if gpu_price_per_second < 0:
        raise ValueError("gpu_price_per_second must be >= 0")
    if image_count is not None and image_count < 0:
        raise ValueError("image_count must be >= 0")
    if min_image_side is not None and min_image_side < 1:
        raise ValueError("min_image_side must be >= 1")
    seconds = round(preset.startup_seconds + hyperparameters.steps * seconds_per_step(preset, hyperparameters), 1)
    vram = vram_gb(preset, hyperparameters)
    return Estimate(
        seconds=seconds,
        cost_usd=seconds * gpu_price_per_second,
        vram_gb=vram,
        gpu_class=gpu_class,
        gpu_price_per_second=gpu_price_per_second,
        warnings=_warnings(
            preset, hyperparameters, image_count=image_count, min_image_side=min_image_side, gpu_class=gpu_class, vram=vram
        ),
    )


def execution_timeout_seconds(estimate: Estimate) -> int:
    """RunPod `policy.executionTimeout` (in seconds; ×1000 for the API): the estimate × 1.5 plus 10 minutes, within 5 s–7 d."""
    seconds = math.ceil(estimate.seconds * TIMEOUT_FACTOR + TIMEOUT_HEADROOM_SECONDS)
    return max(RUNPOD_MIN_EXECUTION_TIMEOUT_SECONDS, min(RUNPOD_MAX_EXECUTION_TIMEOUT_SECONDS, seconds))
