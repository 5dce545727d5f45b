"""Qwen3-VL (dense and MoE) with CROP: one grid per image (patches merged 2x2), M-RoPE positions
kept (`crop_vllm.models.qwen`), and the DeepStack features pruned with the image.

DeepStack: the vision tower also returns features of some of its blocks, one level each, in
the same row as the main feature ([main | level 0 | level 1 | ...]); vLLM adds level i to the
image tokens' hidden states after decoder layer i. PLC pools those rows whole, with one layout,
so every level shrinks with the image. ILP runs layers >= K on the kept tokens only, so the
levels added after those layers are gathered to the kept rows too.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
)
from vllm.model_executor.models.qwen3_vl_moe import (
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLMoeProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from crop_vllm.ilp.step import current_step
from crop_vllm.models.processor import CropProcessorMixin
from crop_vllm.models.qwen import CropQwenMixin


class CropQwen3VLMultiModalProcessor(CropProcessorMixin, Qwen3VLMultiModalProcessor):
    pass


class CropQwen3VLMixin(CropQwenMixin):
    """The Qwen mixin plus DeepStack levels that follow ILP's cut."""

    deepstack_num_level: int  # provided by the stock model

    def _get_deepstack_input_embeds(self, num_tokens: int) -> IntermediateTensors | None:
        """The step's DeepStack levels; levels added after layers >= K only on the kept rows.

        Those levels' row count is marked unbacked, as the kept count is (`crop::ilp_enter`): a
        compiled graph would otherwise take it for a dynamic size, which torch assumes is at
        least 2, and assert that of every step's kept count (a step may keep one row).
        """
        levels = super()._get_deepstack_input_embeds(num_tokens)  # type: ignore[misc]
        if levels is None or self.crop_ilp is None:
            return levels
        step = current_step()
        for level in range(self.crop_ilp.layer, self.deepstack_num_level):
            key = f"deepstack_input_embeds_{level}"
            if step is not None:
                levels[key] = levels[key].index_select(0, step.kept_rows)
            torch._dynamo.decorators.mark_unbacked(levels[key], 0)
        return levels


@MULTIMODAL_REGISTRY.register_processor(
    CropQwen3VLMultiModalProcessor,
    info=Qwen3VLProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class CropQwen3VLForConditionalGeneration(CropQwen3VLMixin, Qwen3VLForConditionalGeneration):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    CropQwen3VLMultiModalProcessor,
    info=Qwen3VLMoeProcessingInfo,
    dummy_inputs=Qwen3VLDummyInputsBuilder,
)
class CropQwen3VLMoeForConditionalGeneration(CropQwen3VLMixin, Qwen3VLMoeForConditionalGeneration):
    pass
