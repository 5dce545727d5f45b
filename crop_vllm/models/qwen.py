"""What CROP adds to the Qwen VL families (Qwen2.5-VL, Qwen3-VL): pruned image embeddings and
M-RoPE positions that keep every kept token's place in the full grid.

One image is one grid (patches merged 2x2). Each kept token carries its original (t, h, w)
position and text after an image continues from the end of the full grid, exactly as without
pruning, so pruning moves no text position. The positions come from the stock model's own
M-RoPE function, run on the prompt with every pruned image expanded back to its full grid; the
dropped cells' columns are then removed. Whatever that function does besides (Qwen2.5-VL's video
time steps, Qwen3-VL's per-frame timestamps) is left exactly as it is.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.multimodal.inputs import MultiModalFeatureSpec

from crop_vllm.geometry import qwen_grid_from_thw
from crop_vllm.ilp.controller import IlpController
from crop_vllm.models.pooling import apply_plan, grid_layouts
from crop_vllm.models.processor import MODE_FIELD, REGION_FIELD, decode_plan_field, pop_plans
from crop_vllm.options import CropSettings
from crop_vllm.vllm_surface import MODEL_TOUCHPOINTS, check_vllm


class CropQwenMixin:
    """Mixed in front of a stock Qwen VL model class."""

    config: object  # provided by the stock model

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        check_vllm(MODEL_TOUCHPOINTS[vllm_config.model_config.hf_config.model_type])
        super().__init__(vllm_config=vllm_config, prefix=prefix)  # type: ignore[call-arg]
        self.crop_settings = CropSettings.from_hf_config(self.config)
        self.crop_merge = self.config.vision_config.spatial_merge_size  # type: ignore[attr-defined]
        self.crop_ilp = IlpController.maybe_create(
            self.language_model.model.layers,  # type: ignore[attr-defined]
            self.crop_settings,
            self.config,
        )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = pop_plans(kwargs)
        embeddings = super().embed_multimodal(**kwargs)  # type: ignore[misc]
        if plans is None or all(plan is None for plan in plans):
            return embeddings
        # Images and videos come back in the order their kwargs arrived.
        modalities = list(self._parse_and_validate_multimodal_inputs(**kwargs))  # type: ignore[attr-defined]
        embeddings = list(embeddings)
        first = 0 if modalities[0] == "image" else len(embeddings) - len(plans)
        for index, (plan, grid_thw) in enumerate(
            zip(plans, kwargs["image_grid_thw"], strict=True)  # type: ignore[call-overload]
        ):
            grid = qwen_grid_from_thw(grid_thw.tolist(), self.crop_merge)
            # Qwen3-VL's rows are [main | deepstack levels]: one layout pools them all.
            embeddings[first + index] = apply_plan(
                embeddings[first + index], grid, plan, self.crop_settings
            )
        return embeddings

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[torch.Tensor, int]:
        """Stock M-RoPE, except that a pruned image keeps only its kept tokens' positions."""
        tokens, features, columns = self._unpruned_prompt(input_tokens, mm_features)
        full_positions, delta = super().get_mrope_input_positions(tokens, features)  # type: ignore[misc]
        if columns is None:
            return full_positions, delta
        positions = full_positions[:, columns].contiguous()
        return positions, int(positions.max()) + 1 - len(input_tokens)

    def _unpruned_prompt(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[list[int], list[MultiModalFeatureSpec], list[int] | None]:
        """The prompt with each pruned image's placeholder back at its full grid's length, its
        features moved to match, and which of its columns the real prompt has (None: all)."""
        tokens: list[int] = []
        features: list[MultiModalFeatureSpec] = []
        columns: list[int] = []
        copied = 0  # prompt tokens copied so far
        pruned = False
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            placeholder = feature.mm_position
            columns += range(len(tokens), len(tokens) + placeholder.offset - copied)
            tokens += input_tokens[copied : placeholder.offset]
            offset = len(tokens)
            kept, num_cells = self._kept_cells(feature)
            if kept is None:
                columns += range(offset, offset + placeholder.length)
                tokens += input_tokens[placeholder.offset : placeholder.offset + placeholder.length]
                features.append(replace(feature, mm_position=replace(placeholder, offset=offset)))
            else:
                pruned = True
                columns += (offset + cell for cell in kept)
                tokens += input_tokens[placeholder.offset : placeholder.offset + 1] * num_cells
                full = replace(placeholder, offset=offset, length=num_cells)
                features.append(replace(feature, mm_position=full))
            copied = placeholder.offset + placeholder.length
        if not pruned:
            return input_tokens, mm_features, None
        columns += range(len(tokens), len(tokens) + len(input_tokens) - copied)
        tokens += input_tokens[copied:]
        return tokens, features, columns

    def _kept_cells(self, feature: MultiModalFeatureSpec) -> tuple[list[int] | None, int]:
        """(flat grid indices of a pruned image's tokens in order, or None when it is not
        pruned; its grid's cell count)."""
        data = feature.data
        if feature.modality != "image" or data is None or REGION_FIELD not in data:
            return None, 0
        grid = qwen_grid_from_thw(data["image_grid_thw"].data.tolist(), self.crop_merge)
        plan = decode_plan_field(data[REGION_FIELD].data, data[MODE_FIELD].data)
        (layout,) = grid_layouts([grid], plan, self.crop_settings)
        if layout.is_identity:
            return None, grid.rows * grid.cols
        return [row * grid.cols + col for row, col in layout.positions], grid.rows * grid.cols
