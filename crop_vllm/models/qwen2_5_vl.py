"""Qwen2.5-VL with CROP: one grid per image (patches merged 2x2), M-RoPE positions kept.

Each kept token carries its original (t, h, w) position, and text after an image continues
from the end of the full grid, exactly as without pruning, so pruning moves no text position.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFeatureSpec

from crop_vllm.geometry import Grid, qwen_grid_from_thw
from crop_vllm.ilp.controller import IlpController
from crop_vllm.models.pooling import apply_plan, grid_layouts
from crop_vllm.models.processor import (
    MODE_FIELD,
    REGION_FIELD,
    CropProcessorMixin,
    decode_plan_field,
    pop_plans,
)
from crop_vllm.options import CropSettings


class CropQwen2_5_VLMultiModalProcessor(CropProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    CropQwen2_5_VLMultiModalProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class CropQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.crop_settings = CropSettings.from_hf_config(self.config)
        self.crop_merge = self.config.vision_config.spatial_merge_size
        self.crop_ilp = IlpController.maybe_create(
            self.language_model.model.layers, self.crop_settings, self.config
        )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = pop_plans(kwargs)
        if plans is None or all(plan is None for plan in plans):
            return super().embed_multimodal(**kwargs)
        # Images and videos come back in the order their kwargs arrived.
        modalities = list(self._parse_and_validate_multimodal_inputs(**kwargs))
        embeddings = list(super().embed_multimodal(**kwargs))
        first = 0 if modalities[0] == "image" else len(embeddings) - len(plans)
        grids = kwargs["image_grid_thw"]
        for index, (plan, grid_thw) in enumerate(zip(plans, grids, strict=True)):
            grid = qwen_grid_from_thw(grid_thw.tolist(), self.crop_merge)
            embeddings[first + index] = apply_plan(
                embeddings[first + index], grid, plan, self.crop_settings
            )
        return embeddings

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[torch.Tensor, int]:
        """Stock M-RoPE, except that a pruned image keeps only its kept tokens' positions."""
        pieces: list[np.ndarray] = []
        next_position = 0  # first position after everything placed so far
        consumed = 0  # prompt tokens placed so far
        features = sorted(mm_features, key=lambda f: f.mm_position.offset)
        for feature, (offset, grid_t, grid_h, grid_w, t_factor) in zip(
            features, self.iter_mm_grid_thw(features), strict=True
        ):
            text_len = offset - consumed
            pieces.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_position)
            start = next_position + text_len
            grid = np.indices((grid_t, grid_h, grid_w))
            if t_factor != 1.0:
                grid[0] = (grid[0] * t_factor).astype(np.int64)
            positions = grid.reshape(3, -1) + start
            kept = self._kept_cells(feature, Grid(grid_h, grid_w))
            pieces.append(positions if kept is None else positions[:, kept])
            next_position = int(positions.max()) + 1
            consumed = offset + (positions.shape[1] if kept is None else len(kept))
        if consumed < len(input_tokens):
            text_len = len(input_tokens) - consumed
            pieces.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_position)
        llm_positions = np.concatenate(pieces, axis=1).reshape(3, -1)
        delta = int(llm_positions.max()) + 1 - len(input_tokens)
        return torch.from_numpy(np.ascontiguousarray(llm_positions)), delta

    def _kept_cells(self, feature: MultiModalFeatureSpec, grid: Grid) -> list[int] | None:
        """Flat grid indices of a pruned image's tokens, in order; None when not pruned."""
        data = feature.data
        if feature.modality != "image" or data is None or REGION_FIELD not in data:
            return None
        plan = decode_plan_field(data[REGION_FIELD].data, data[MODE_FIELD].data)
        (layout,) = grid_layouts([grid], plan, self.crop_settings)
        if layout.is_identity:
            return None
        return [row * grid.cols + col for row, col in layout.positions]
