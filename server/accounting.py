"""How many visual tokens an image costs with and without CROP, for `usage.crop` and previews.

Uses the same pure functions as the vLLM plugin (`crop_vllm.geometry`, `crop_vllm.layout`) on
the model's own config and image-processor settings, with the gateway's CROP settings applied to
the config exactly as the engine receives them, so the counts match the engine's prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crop_vllm.families import family_of_architecture
from crop_vllm.geometry import Grid, image_grids, image_processor_settings, num_image_tokens
from crop_vllm.ilp.plan import image_keep_mask
from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings, ImagePlan


@dataclass(frozen=True)
class ImageTokens:
    full: int
    after_plc: int
    after_ilp: int


@dataclass(frozen=True)
class ModelGeometry:
    """The model's visual-grid geometry and the CROP settings in force."""

    hf_config: Any
    image_processor: dict[str, Any]
    settings: CropSettings
    crop_architecture: str

    @classmethod
    def load(
        cls, model: str, settings: CropSettings, trust_remote_code: bool = False
    ) -> ModelGeometry:
        """Read `model`'s configs (local files or the hub cache), with `settings` applied on top
        as the engine receives them.

        `trust_remote_code` as for the engine: InternVL chat checkpoints bring their config
        class as remote code.
        """
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        architecture = (getattr(hf_config, "architectures", None) or ["?"])[0]
        try:
            crop_architecture = family_of_architecture(architecture).crop_architecture
        except ValueError as exc:
            raise ValueError(f"{model}: {exc}") from None
        for key, value in settings.to_hf_overrides().items():
            setattr(hf_config, key, value)
        processor = image_processor_settings(model, hf_config)
        return cls(hf_config, processor, CropSettings.from_hf_config(hf_config), crop_architecture)

    def engine_hf_overrides(self) -> dict[str, object]:
        """What an engine loads the model with: the CROP class and settings."""
        return {"architectures": [self.crop_architecture], **self.settings.to_hf_overrides()}

    def grids(self, width: int, height: int) -> list[Grid]:
        return image_grids(self.hf_config, self.image_processor, height, width)

    def image_tokens(
        self, width: int, height: int, region: Region | None, mode: CropMode
    ) -> ImageTokens:
        """Unpruned, prefilled-after-PLC and kept-after-ILP counts of one image (the ILP count
        is the plugin's own keep mask; it equals after_plc when the mode has no ILP)."""
        grids = self.grids(width, height)
        plan = None if region is None else ImagePlan(mode, region)
        plc = self.settings.plc
        full = num_image_tokens(grids, None, plc)
        after_plc = num_image_tokens(grids, None if plan is None else plan.plc_region, plc)
        after_ilp = sum(image_keep_mask(grids, plan, plc))
        return ImageTokens(full, after_plc, after_ilp)
