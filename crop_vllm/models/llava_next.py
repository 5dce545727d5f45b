"""LLaVA-NeXT with CROP: a base grid plus the AnyRes tiles' unpadded grid, whose rows end in
`image_newline`. The base image is the whole picture resized and the unpadded grid covers the
picture exactly, so one normalized region maps onto both; after pruning, a newline still ends
every row that keeps a token."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from crop_vllm.models.utils import CropProcessorMixin, Grid, apply_plan, pop_plans
from crop_vllm.options import CropSettings


def anyres_grids(image_height: int, image_width: int, hf_config: object) -> list[Grid]:
    """[base grid, unpadded tile grid] of one image, as vLLM's LLaVA-NeXT lays them out."""
    vision = hf_config.vision_config  # type: ignore[attr-defined]
    side = vision.image_size // vision.patch_size
    tiles_h, tiles_w = get_anyres_image_grid_shape(
        (image_height, image_width),
        hf_config.image_grid_pinpoints,
        vision.image_size,  # type: ignore[attr-defined]
    )
    height, width = side * tiles_h, side * tiles_w
    # Same arithmetic as LlavaNextProcessingInfo._get_num_unpadded_features.
    if image_width / image_height > width / height:
        new_height = int(round(image_height * (width / image_width), 7))
        height -= 2 * ((height - new_height) // 2)
    else:
        new_width = int(round(image_width * (height / image_height), 7))
        width -= 2 * ((width - new_width) // 2)
    return [Grid(side, side), Grid(height, width, row_separators=True)]


def _image_size(item: Mapping[str, object]) -> tuple[int, int]:
    height, width = (int(v) for v in item["image_sizes"].tolist())  # type: ignore[attr-defined]
    return height, width


class CropLlavaNextMultiModalProcessor(CropProcessorMixin, LlavaNextMultiModalProcessor):
    def crop_grids(self, out_item: Mapping[str, object]) -> list[Grid]:
        return anyres_grids(*_image_size(out_item), self.info.get_hf_config())


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

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = pop_plans(kwargs)
        image_sizes = kwargs.get("image_sizes")
        embeddings = super().embed_multimodal(**kwargs)
        if plans is None or image_sizes is None:
            return embeddings
        return [
            self._prune(merged, anyres_grids(*(int(v) for v in size.tolist()), self.config), plan)
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
