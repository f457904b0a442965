"""Which rules a dataset is validated against: a preset's, or the generic ones for API uploads.

Drop-to-train knows the preset (loraforge.yaml, default `tiny-sd`), so its dataset is held to that
preset's `min_images`, `min_side`, `recommended_resolution` and `recommended_images`.

An API dataset is created before any job names a preset, and one dataset may serve several presets.
It is validated against the GENERIC rules of its kind: the most permissive thresholds over every preset
of that modality (the smallest `min_images` and `min_side`), so nothing usable by some preset is
thrown away. Job creation then checks the dataset against the chosen preset (image count; the
estimate warns when the smallest image is below the preset's recommended resolution).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..models.dataset import DatasetKind
from .captions import MAX_CAPTION_CHARS
from .probe import PixelLimits

GENERIC_PROFILE = "generic"


class ValidationRules(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: str = Field(description="Preset id, or 'generic-images' / 'generic-video'")
    modality: Literal["image", "video"] = "image"
    min_images: int = Field(ge=1)
    recommended_images: int = Field(ge=1)
    min_side: int = Field(ge=1, description="Images whose shorter side is below this are rejected (IMAGE_TOO_SMALL)")
    recommended_resolution: int | None = Field(default=None, ge=1, description="Below this an accepted image gets a note")
    max_side: int = PixelLimits.max_side
    max_pixels: int = PixelLimits.max_pixels
    max_caption_chars: int = MAX_CAPTION_CHARS

    @property
    def pixel_limits(self) -> PixelLimits:
        return PixelLimits(max_side=self.max_side, max_pixels=self.max_pixels)


def rules_for_preset(preset_id: str) -> ValidationRules:
    """Rules of one preset; raises InvalidInput(UNKNOWN_PRESET) like every preset lookup."""
    from ..presets import get_preset

    preset = get_preset(preset_id)
    return ValidationRules(
        profile=preset.id,
        modality="video" if preset.modality == "video" else "image",
        min_images=preset.min_images,
        recommended_images=preset.recommended_images,
        min_side=preset.min_side,
        recommended_resolution=preset.recommended_resolution,
    )


def generic_rules(kind: DatasetKind = DatasetKind.IMAGES) -> ValidationRules:
    """The most permissive thresholds over the presets of this kind (see the module docstring)."""
    from ..presets import load_presets

    modality = "video" if kind == DatasetKind.VIDEO else "image"
    presets = [p for p in load_presets().values() if p.modality == modality] or list(load_presets().values())
    return ValidationRules(
        profile=f"{GENERIC_PROFILE}-{'video' if modality == 'video' else 'images'}",
        modality=modality,
        min_images=min(p.min_images for p in presets),
        recommended_images=min(p.recommended_images for p in presets),
        min_side=min(p.min_side for p in presets),
        recommended_resolution=None,
    )
