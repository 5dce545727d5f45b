"""LLaVA-NeXT with CROP: a base grid plus the AnyRes tiles' unpadded grid, whose rows end in
`image_newline`; after pruning, a newline still ends every row that keeps a token."""

from __future__ import annotations

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from crop_vllm.geometry import Grid, llava_next_grids
from crop_vllm.ilp.controller import IlpController
from crop_vllm.models.pooling import apply_plan
from crop_vllm.models.processor import CropProcessorMixin, pop_plans
from crop_vllm.options import CropSettings


class CropLlavaNextMultiModalProcessor(CropProcessorMixin, LlavaNextMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    CropLlavaNextMultiModalProcessor,
    info=LlavaNextProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class CropLlavaNextForConditionalGeneration(LlavaNextForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self.config.vision_feature_select_strategy != "default":
            raise ValueError("CROP for LLaVA-NeXT needs vision_feature_select_strategy='default'")
        self.crop_settings = CropSettings.from_hf_config(self.config)
        self.crop_ilp = IlpController.maybe_create(
            self.language_model.model.layers, self.crop_settings, self.config
        )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = pop_plans(kwargs)
        image_sizes = kwargs.get("image_sizes")
        embeddings = super().embed_multimodal(**kwargs)
        if plans is None or image_sizes is None:
            return embeddings
        return [
            self._prune(
                merged, llava_next_grids(self.config, *(int(v) for v in size.tolist())), plan
            )
            for merged, size, plan in zip(embeddings, image_sizes, plans, strict=True)
        ]

    def _prune(self, merged: torch.Tensor, grids: list[Grid], plan) -> torch.Tensor:  # type: ignore[no-untyped-def]
        """Split vLLM's merged [base, unpadded rows + newline] sequence, prune each grid."""
        base_grid, tile_grid = grids
        num_base = base_grid.rows * base_grid.cols
        if merged.shape[0] != num_base + tile_grid.rows * (tile_grid.cols + 1):
            raise ValueError(f"unexpected LLaVA-NeXT feature length {merged.shape[0]}")
        base = merged[:num_base]
        tiles = merged[num_base:].view(tile_grid.rows, tile_grid.cols + 1, -1)[:, :-1]
        return torch.cat(
            [
                apply_plan(base, base_grid, plan, self.crop_settings),
                apply_plan(
                    tiles.reshape(-1, merged.shape[-1]),
                    tile_grid,
                    plan,
                    self.crop_settings,
                    separator=self.image_newline,
                ),
            ]
        )
