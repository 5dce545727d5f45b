"""LLaVA-1.5 with CROP: one square grid per image (CLS dropped, `default` feature strategy)."""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from crop_vllm.geometry import llava_grids
from crop_vllm.ilp.controller import IlpController
from crop_vllm.models.pooling import apply_plan
from crop_vllm.models.processor import CropProcessorMixin, pop_plans
from crop_vllm.options import CropSettings


class CropLlavaMultiModalProcessor(CropProcessorMixin, LlavaMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    CropLlavaMultiModalProcessor,
    info=LlavaProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class CropLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self.config.vision_feature_select_strategy != "default":
            raise ValueError("CROP for LLaVA needs vision_feature_select_strategy='default'")
        self.crop_settings = CropSettings.from_hf_config(self.config)
        (self.crop_grid,) = llava_grids(self.config)
        self.crop_ilp = IlpController.maybe_create(
            self.language_model.model.layers, self.crop_settings, self.config
        )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = pop_plans(kwargs)
        embeddings = super().embed_multimodal(**kwargs)
        return [
            apply_plan(features, self.crop_grid, plan, self.crop_settings)
            for features, plan in zip(embeddings, plans or [None] * len(embeddings), strict=True)
        ]
