"""What a request costs with and without CROP, for `usage.crop`, the metrics and previews:
visual tokens per image, and the KV cache the request held.

Uses the same pure functions as the vLLM plugin (`crop_vllm.geometry`, `crop_vllm.layout`,
`crop_vllm.ilp.plan`) on the model's own config and image-processor settings, with the gateway's
CROP settings applied to the config exactly as the engine receives them, so the counts match the
engine's prompt length and its KV allocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crop_vllm.families import family_of_architecture, language_config
from crop_vllm.geometry import Grid, image_grids, image_processor_settings, num_image_tokens
from crop_vllm.ilp.plan import KvShape, image_keep_mask, kv_blocks
from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings, ImagePlan
from server.engines import KvCacheFacts
from server.protocol import CropKvUsage

#: Bytes per element of the KV dtypes that store K and V as plain elements (vLLM's
#: `--kv-cache-dtype` names, and torch's names of model dtypes for `auto`). Packed or
#: scaled ones (4-bit, per-token-head scales) are left out: their bytes are not reported.
KV_DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
}


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

    @property
    def kv_shape(self) -> KvShape:
        return KvShape.of(self.hf_config)

    def kv_dtype(self, kv_cache: KvCacheFacts) -> str | None:
        """The dtype of the engine's KV elements: its cache dtype, or with `auto` the model's
        dtype (the checkpoint's own where the engine does not say which; None if neither)."""
        if kv_cache.cache_dtype != "auto":
            return kv_cache.cache_dtype
        if kv_cache.model_dtype is not None:
            return kv_cache.model_dtype
        declared = getattr(self.hf_config, "dtype", None) or getattr(
            language_config(self.hf_config), "dtype", None
        )
        return None if declared is None else str(declared).removeprefix("torch.")

    def kv_usage(self, num_tokens: int, num_dropped: int, kv_cache: KvCacheFacts) -> CropKvUsage:
        """The KV cache a request held at its end, `num_tokens` tokens of which ILP dropped
        `num_dropped` from layer K on, with and without ILP's KV saving (which applies only
        with `crop_ilp_compact_kv`)."""
        dropped = num_dropped if self.settings.ilp_compact_kv else 0
        shape, block_size = self.kv_shape, kv_cache.block_size
        without, with_saving = kv_blocks(
            num_tokens, dropped, block_size, shape.num_layers, self.settings.ilp_layer
        )
        dtype = self.kv_dtype(kv_cache)
        element = None if dtype is None else KV_DTYPE_BYTES.get(dtype)
        layer_block = None if element is None else shape.layer_block_bytes(block_size, element)
        return CropKvUsage(
            block_size=block_size,
            dtype=dtype,
            tokens=num_tokens,
            dropped_tokens=dropped,
            layer_blocks_without_saving=without,
            layer_blocks_with_saving=with_saving,
            bytes_without_saving=None if layer_block is None else without * layer_block,
            bytes_with_saving=None if layer_block is None else with_saving * layer_block,
            saved_fraction=round(1.0 - with_saving / without, 6) if without else 0.0,
        )
