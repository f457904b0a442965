"""The cost model: time scales with steps, batch and resolution as documented; warnings; RunPod timeout."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loraforge.models.job import Estimate, Hyperparameters
from loraforge.presets import Preset, get_preset, load_presets
from loraforge.presets.cost_model import (
    ACTIVATION_SHARE,
    RUNPOD_MAX_EXECUTION_TIMEOUT_SECONDS,
    RUNPOD_MIN_EXECUTION_TIMEOUT_SECONDS,
    estimate,
    execution_timeout_seconds,
    gpu_class_memory_gb,
)

PRICE = 0.00031  # reference/runpod.md §3: 4090 PRO, $/s


@pytest.fixture(autouse=True)
def _fresh_presets_cache() -> Iterator[None]:
    load_presets.cache_clear()
    yield
    load_presets.cache_clear()


def _preset(**changes: Any) -> Preset:
    """A synthetic preset with round numbers, so the arithmetic in the tests is exact."""
    raw: dict[str, Any] = {
        "id": "test-model",
        "name": "Test model",
        "family": "test",
        "engine": "ai-toolkit",
        "arch": "flux",
        "base_model": "org/test-model",
        "noise_scheduler": "flowmatch",
        "gpu_class": "24gb",
        "min_vram_gb": 20,
        "recommended_gpu": "RTX 4090 24 GB",
        "reference_gpu": "RTX 4090 24 GB",
        "seconds_per_step": 2.0,
        "startup_seconds": 100.0,
        "min_images": 4,
        "recommended_images": 10,
        "min_side": 256,
        "recommended_resolution": 1024,
        "defaults": {
            "steps": 1000, "learning_rate": 1e-4, "rank": 16, "alpha": 16, "batch_size": 1,
            "resolution": 1024, "optimizer": "adamw8bit", "gradient_accumulation": 1,
        },
        "bounds": {
            "steps": {"min": 1, "max": 100000}, "learning_rate": {"min": 1e-7, "max": 1.0}, "rank": {"min": 1, "max": 256},
            "alpha": {"min": 1, "max": 256}, "batch_size": {"min": 1, "max": 64}, "resolution": {"min": 32, "max": 2048},
            "gradient_accumulation": {"min": 1, "max": 64},
        },
        "checkpoint_every": 250,
    }
    raw.update(changes)
    return Preset.model_validate(raw)


def _hp(preset: Preset, **changes: Any) -> Hyperparameters:
    return Hyperparameters.model_validate(preset.defaults.model_dump() | changes)


def _estimate(preset: Preset, hp: Hyperparameters | None = None, *, images: int | None = 20, side: int | None = 2048,
              gpu_class: str | None = None, price: float = PRICE) -> Estimate:
    return estimate(preset, hp or preset.defaults, image_count=images, min_image_side=side,
                    gpu_price_per_second=price, gpu_class=gpu_class or preset.gpu_class)


def _training_seconds(preset: Preset, est: Estimate) -> float:
    return est.seconds - preset.startup_seconds


def _codes(est: Estimate) -> list[str]:
    return [w.split(":", 1)[0] for w in est.warnings]


# ───────────────────────── time ─────────────────────────


def test_defaults_cost_startup_plus_steps_times_seconds_per_step() -> None:
    # Given a preset at its defaults
    preset = _preset()

    # When it is estimated
    est = _estimate(preset)

    # Then seconds = startup + steps × seconds_per_step, and nothing to warn about
    assert est.seconds == pytest.approx(100 + 1000 * 2.0)
    assert est.vram_gb == 20 and est.gpu_class == "24gb" and est.gpu_price_per_second == PRICE
    assert est.warnings == []


def test_time_is_linear_in_steps() -> None:
    # Given the same preset at 1000 and 2000 steps
    preset = _preset()

    # When both are estimated
    one = _estimate(preset, _hp(preset, steps=1000))
    two = _estimate(preset, _hp(preset, steps=2000))

    # Then the training part doubles and the startup does not
    assert _training_seconds(preset, two) == pytest.approx(2 * _training_seconds(preset, one))
    assert two.seconds < 2 * one.seconds


@pytest.mark.parametrize(
    ("batch_size", "gradient_accumulation", "factor"),
    [(1, 1, 1.0), (2, 1, 2.0), (1, 2, 2.0), (2, 2, 4.0), (4, 4, 16.0)],
)
def test_time_is_linear_in_batch_times_gradient_accumulation(batch_size: int, gradient_accumulation: int, factor: float) -> None:
    # Given a preset whose default is batch 1, no accumulation
    preset = _preset()
    base = _estimate(preset)

    # When the batch or the accumulation grows
    est = _estimate(preset, _hp(preset, batch_size=batch_size, gradient_accumulation=gradient_accumulation))

    # Then the training time grows by batch × accumulation relative to the default
    assert _training_seconds(preset, est) == pytest.approx(factor * _training_seconds(preset, base))


def test_batch_factor_is_relative_to_the_preset_default() -> None:
    # Given a preset whose default batch is 4 (like tiny-sd)
    preset = _preset(defaults={**_preset().defaults.model_dump(), "batch_size": 4})

    # When batch 1 is estimated
    est = _estimate(preset, _hp(preset, batch_size=1))

    # Then a step costs a quarter of the default's
    assert _training_seconds(preset, est) == pytest.approx(0.25 * 1000 * 2.0)


@pytest.mark.parametrize(("resolution", "factor"), [(1024, 1.0), (2048, 4.0), (1536, 2.25), (768, 0.5625), (512, 0.25)])
def test_time_scales_with_the_pixel_count(resolution: int, factor: float) -> None:
    # Given a preset trained at 1024 px by default
    preset = _preset()

    # When another resolution is estimated
    est = _estimate(preset, _hp(preset, resolution=resolution), side=4096)

    # Then the training time scales with (resolution / default)²
    assert _training_seconds(preset, est) == pytest.approx(factor * 1000 * 2.0)


def test_resolution_factor_has_a_floor() -> None:
    # Given a preset trained at 1024 px
    preset = _preset()

    # When a quarter of the resolution is estimated (pixel ratio 1/16)
    est = _estimate(preset, _hp(preset, resolution=256))

    # Then the step time does not fall below a quarter of the default's (fixed per-step overheads)
    assert _training_seconds(preset, est) == pytest.approx(0.25 * 1000 * 2.0)


@given(steps=st.integers(min_value=1, max_value=50_000), extra=st.integers(min_value=1, max_value=50_000))
def test_more_steps_never_cost_less(steps: int, extra: int) -> None:
    # Given the same preset at two step counts
    preset = _preset()

    # When both are estimated
    fewer = _estimate(preset, _hp(preset, steps=steps))
    more = _estimate(preset, _hp(preset, steps=steps + extra))

    # Then more steps take longer and cost more
    assert more.seconds > fewer.seconds and more.cost_usd > fewer.cost_usd


# ───────────────────────── cost ─────────────────────────


@pytest.mark.parametrize("price", [0.0, 0.00019, PRICE, 0.00116])
def test_cost_is_seconds_times_price(price: float) -> None:
    # Given a GPU class price
    preset = _preset()

    # When a job is estimated
    est = _estimate(preset, _hp(preset, steps=1234, batch_size=2), price=price)

    # Then the cost is exactly the estimated seconds times the price
    assert est.cost_usd == est.seconds * price


def test_negative_price_is_refused() -> None:
    # Given a negative price
    # When a job is estimated
    # Then it is refused
    with pytest.raises(ValueError, match="gpu_price_per_second"):
        _estimate(_preset(), price=-0.1)


# ───────────────────────── VRAM ─────────────────────────


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 20),
        ({"batch_size": 2}, math.ceil(20 * (1 + ACTIVATION_SHARE * 1))),
        ({"batch_size": 4}, math.ceil(20 * (1 + ACTIVATION_SHARE * 3))),
        ({"resolution": 2048}, math.ceil(20 * (1 + ACTIVATION_SHARE * 3))),
        ({"resolution": 512}, 20),
        ({"gradient_accumulation": 8}, 20),
        ({"rank": 128}, 20),
    ],
)
def test_vram_grows_with_batch_and_pixels_only(changes: dict[str, int], expected: int) -> None:
    # Given a preset needing 20 GB at its defaults
    preset = _preset()

    # When other hyperparameters are estimated
    est = _estimate(preset, _hp(preset, **changes), side=4096, gpu_class="80gb")

    # Then VRAM follows the documented rule: activations (a quarter) scale with batch × pixels, never below the minimum
    assert est.vram_gb == expected


def test_gpu_class_memory_is_read_from_the_class_name() -> None:
    # Given class names
    # When their memory is read
    # Then sized classes give their size and cpu gives none
    assert (gpu_class_memory_gb("24gb"), gpu_class_memory_gb("80GB"), gpu_class_memory_gb("cpu")) == (24, 80, None)


# ───────────────────────── warnings ─────────────────────────


def test_warnings_start_with_a_code() -> None:
    # Given a job that triggers every warning
    preset = _preset()
    hp = _hp(preset, steps=100, learning_rate=5e-3, rank=128, batch_size=4)

    # When it is estimated
    est = _estimate(preset, hp, images=2, side=512)

    # Then each warning is "CODE: message", in the documented order
    assert _codes(est) == ["TOO_FEW_IMAGES", "UPSCALING", "STEPS_FAR_FROM_DEFAULT", "LEARNING_RATE_HIGH", "RANK_HIGH", "VRAM_ABOVE_GPU_CLASS"]
    assert all(w.split(":", 1)[1].startswith(" ") and len(w) > 30 for w in est.warnings)


@pytest.mark.parametrize(
    ("images", "warned", "refused"), [(2, True, True), (4, True, False), (9, True, False), (10, False, False), (None, False, False)]
)
def test_too_few_images(images: int | None, warned: bool, refused: bool) -> None:
    # Given a preset needing 4 images and recommending 10
    preset = _preset()

    # When datasets of various sizes are estimated
    est = _estimate(preset, images=images)

    # Then below the recommendation it warns, and below the minimum it says the job will be refused
    assert ("TOO_FEW_IMAGES" in _codes(est)) is warned
    assert any("will be refused" in w for w in est.warnings) is refused


@pytest.mark.parametrize(("side", "warned"), [(512, True), (1023, True), (1024, False), (3000, False), (None, False)])
def test_upscaling(side: int | None, warned: bool) -> None:
    # Given training at 1024 px
    preset = _preset()

    # When the smallest image side varies
    est = _estimate(preset, side=side)

    # Then it warns only when the resolution is above the smallest side
    assert ("UPSCALING" in _codes(est)) is warned


@pytest.mark.parametrize(("steps", "warned"), [(249, True), (250, False), (1000, False), (4000, False), (4001, True)])
def test_steps_far_from_default(steps: int, warned: bool) -> None:
    # Given a default of 1000 steps
    preset = _preset()

    # When other step counts are estimated
    est = _estimate(preset, _hp(preset, steps=steps))

    # Then it warns below 0.25× and above 4× only
    assert ("STEPS_FAR_FROM_DEFAULT" in _codes(est)) is warned


@pytest.mark.parametrize(
    ("learning_rate", "optimizer", "warned"),
    [(1e-4, "adamw8bit", False), (1e-3, "adamw8bit", False), (1.1e-3, "adamw8bit", True), (1e-2, "adamw", True), (1.0, "prodigy", False)],
)
def test_learning_rate_high(learning_rate: float, optimizer: str, warned: bool) -> None:
    # Given a default learning rate of 1e-4
    preset = _preset()

    # When other learning rates are estimated
    est = _estimate(preset, _hp(preset, learning_rate=learning_rate, optimizer=optimizer))

    # Then it warns above 10× the default, except for prodigy whose lr is a multiplier
    assert ("LEARNING_RATE_HIGH" in _codes(est)) is warned


@pytest.mark.parametrize(("rank", "gpu_class", "warned"), [(64, "24gb", False), (65, "24gb", True), (128, "48gb", False), (128, "cpu", False)])
def test_rank_high_on_24gb(rank: int, gpu_class: str, warned: bool) -> None:
    # Given a rank and a GPU class
    preset = _preset()

    # When it is estimated
    est = _estimate(preset, _hp(preset, rank=rank), gpu_class=gpu_class)

    # Then a rank above 64 warns only on a 24 GB class
    assert ("RANK_HIGH" in _codes(est)) is warned


@pytest.mark.parametrize(("batch_size", "gpu_class", "warned"), [(1, "24gb", False), (2, "24gb", True), (2, "48gb", False), (64, "cpu", False)])
def test_vram_above_gpu_class(batch_size: int, gpu_class: str, warned: bool) -> None:
    # Given a preset needing 20 GB at batch 1 (25 GB at batch 2)
    preset = _preset()

    # When a batch size and a class are estimated
    est = _estimate(preset, _hp(preset, batch_size=batch_size), gpu_class=gpu_class)

    # Then it warns when the estimate exceeds the class's memory
    assert ("VRAM_ABOVE_GPU_CLASS" in _codes(est)) is warned


# ───────────────────────── shipped presets ─────────────────────────


def test_every_shipped_preset_estimates_cleanly_at_its_defaults() -> None:
    # Given every shipped preset with a good dataset
    for preset in load_presets().values():
        # When its defaults are estimated on its own class
        est = _estimate(preset, images=preset.recommended_images, side=preset.defaults.resolution)

        # Then there is nothing to warn about and the VRAM fits the class
        assert est.warnings == [], (preset.id, est.warnings)
        assert est.seconds > preset.startup_seconds


def test_tiny_sd_finishes_in_seconds_and_flux_in_about_an_hour() -> None:
    # Given the CPU default and FLUX.1-dev at their defaults
    tiny = _estimate(get_preset("tiny-sd"), images=4, side=64, price=0.0)
    flux = _estimate(get_preset("flux-dev"), images=20, side=1024)

    # When they are compared
    # Then the local run takes seconds and costs nothing, the FLUX LoRA about an hour for about a dollar
    assert tiny.seconds < 10 and tiny.cost_usd == 0.0 and tiny.vram_gb == 0
    assert 45 * 60 < flux.seconds < 90 * 60
    assert 0.5 < flux.cost_usd < 2.0


# ───────────────────────── RunPod execution timeout ─────────────────────────


def _bare(seconds: float) -> Estimate:
    return Estimate(seconds=seconds, cost_usd=0.0, vram_gb=0, gpu_class="24gb", gpu_price_per_second=0.0)


def test_execution_timeout_is_estimate_times_one_and_a_half_plus_ten_minutes() -> None:
    # Given a one-hour estimate
    # When the timeout is computed
    timeout = execution_timeout_seconds(_bare(3600))

    # Then it is 1.5 × the estimate plus 10 minutes of headroom, in whole seconds
    assert timeout == 3600 * 1.5 + 600
    assert isinstance(timeout, int)


def test_execution_timeout_rounds_up() -> None:
    # Given an estimate with a fraction of a second
    # When the timeout is computed
    # Then it is rounded up, never down
    assert execution_timeout_seconds(_bare(10.1)) == 616


def test_execution_timeout_always_leaves_headroom() -> None:
    # Given estimates from seconds to days
    for seconds in (0.0, 5.0, 60.0, 3600.0, 86400.0):
        # When the timeout is computed
        # Then it is at least ten minutes longer than the estimate
        assert execution_timeout_seconds(_bare(seconds)) >= seconds + 600


def test_execution_timeout_is_clamped_to_runpod_limits() -> None:
    # Given estimates beyond RunPod's 7-day ceiling and below its 5-second floor
    # When timeouts are computed
    # Then they stay within RunPod's executionTimeout range
    assert execution_timeout_seconds(_bare(30 * 86400)) == RUNPOD_MAX_EXECUTION_TIMEOUT_SECONDS == 7 * 24 * 3600
    assert execution_timeout_seconds(_bare(-10_000)) == RUNPOD_MIN_EXECUTION_TIMEOUT_SECONDS == 5


def test_execution_timeout_of_a_real_estimate() -> None:
    # Given the FLUX.1-dev default estimate
    est = _estimate(get_preset("flux-dev"))

    # When the timeout is computed
    timeout = execution_timeout_seconds(est)

    # Then the job gets one and a half times its expected time plus headroom
    assert timeout == math.ceil(est.seconds * 1.5 + 600)
