"""Qwen2.5-VL with CROP: one grid per image (patches merged 2x2), M-RoPE positions kept
(`crop_vllm.models.qwen`)."""

from __future__ import annotations

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from crop_vllm.models.processor import CropProcessorMixin
from crop_vllm.models.qwen import CropQwenMixin


class CropQwen2_5_VLMultiModalProcessor(CropProcessorMixin, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    CropQwen2_5_VLMultiModalProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class CropQwen2_5_VLForConditionalGeneration(CropQwenMixin, Qwen2_5_VLForConditionalGeneration):
    pass
