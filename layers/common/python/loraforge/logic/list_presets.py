"""`GET /v1/presets`: what can be trained here, with defaults, bounds, VRAM, GPU and whether this deployment can run it."""

from __future__ import annotations

from pydantic import Field

from ..models.base import DomainModel
from ..models.job import Hyperparameters
from ..presets import Bound, Preset, load_presets
from ..settings import get_settings
from .estimate_job import endpoint_for


class PresetInfo(DomainModel):
    id: str
    name: str
    family: str
    engine: str
    modality: str
    base_model: str
    gpu_class: str = Field(description="The RunPod endpoint class the preset runs on (RunPodEndpoints parameter)")
    gpu_name: str = Field(description="The GPU the preset is sized for")
    min_vram_gb: int
    endpoint_configured: bool = Field(description="Whether this deployment has a RunPod endpoint for the GPU class; if not, jobs are refused")
    gpu_price_per_second: float | None = Field(description="USD per second from the GpuPrices parameter (null: not configured)")
    defaults: Hyperparameters
    bounds: dict[str, Bound] = Field(description="Allowed range of each bounded hyperparameter")
    min_images: int
    recommended_images: int
    recommended_resolution: int
    min_side: int = Field(description="Images with a smaller side are rejected")
    checkpoint_every: int = Field(description="Default steps between checkpoints")


def preset_info(preset: Preset) -> PresetInfo:
    return PresetInfo(
        id=preset.id, name=preset.name, family=preset.family, engine=str(preset.engine), modality=preset.modality,
        base_model=preset.base_model, gpu_class=preset.gpu_class, gpu_name=preset.recommended_gpu, min_vram_gb=preset.min_vram_gb,
        endpoint_configured=endpoint_for(preset.gpu_class) is not None,
        gpu_price_per_second=get_settings().gpu_prices.get(preset.gpu_class),
        defaults=preset.defaults, bounds=preset.bounds, min_images=preset.min_images, recommended_images=preset.recommended_images,
        recommended_resolution=preset.recommended_resolution, min_side=preset.min_side, checkpoint_every=preset.checkpoint_every,
    )


def list_presets() -> list[PresetInfo]:
    return [preset_info(p) for p in load_presets().values()]
