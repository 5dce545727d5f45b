"""InternVL3 / 3.5 chat checkpoints with CROP: one grid per tile plus the thumbnail's.

InternVL resizes an image onto a lattice of square tiles (1 to `max_dynamic_patch`, at the
aspect ratio closest to the image's) and adds a thumbnail of the whole image when there is more
than one tile; each tile and the thumbnail become 16x16 tokens (pixel shuffle), tile by tile,
with no separator tokens, between `<img>` and `</img>`. PLC pools each tile with the region's
cells that fall in it (snapped on the whole lattice) and the thumbnail with the region itself;
the LLM uses 1-D RoPE and full attention, so ILP needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings
from vllm.model_executor.models.internvl import (
    InternVLChatModel,
    InternVLDummyInputsBuilder,
    InternVLMultiModalProcessor,
    InternVLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataItems

from crop_vllm.geometry import (
    INTERNVL_TILING_FIELD,
    InternVLTiling,
    internvl_grids,
    internvl_tiling,
)
from crop_vllm.ilp.controller import IlpController
from crop_vllm.models.pooling import apply_plan_to_grids
from crop_vllm.models.processor import CropProcessorMixin, pop_plans
from crop_vllm.options import CropSettings, strip_request_keys
from crop_vllm.vllm_surface import MODEL_TOUCHPOINTS, check_vllm


class CropInternVLMultiModalProcessor(CropProcessorMixin, InternVLMultiModalProcessor):
    """Records each image's tiling as a processed field: InternVL's own fields keep only the
    tile count, and the grids need the lattice's shape."""

    def _apply_hf_processor_main(
        self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]
    ):
        processed = super()._apply_hf_processor_main(mm_items, hf_kwargs)
        images = mm_items.get("image")
        if not isinstance(images, ImageProcessorItems):
            return processed
        # The image processor as the request's kwargs configure it: the one that tiled.
        image_processor = self.info.get_image_processor(**strip_request_keys(hf_kwargs))
        min_tiles, max_tiles = image_processor.resolve_min_max_num(use_thumbnail=False)
        tilings = []
        for index in range(images.get_count()):
            size = images.get_image_size(index)
            tiling = internvl_tiling(
                size.height,
                size.width,
                image_processor.image_size,
                min_tiles,
                max_tiles,
                image_processor.use_thumbnail,
            )
            tilings.append([tiling.rows, tiling.cols, int(tiling.thumbnail)])
        processed[INTERNVL_TILING_FIELD] = torch.tensor(tilings, dtype=torch.int64)
        return processed

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):  # type: ignore[no-untyped-def]
        return {
            **super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs),
            INTERNVL_TILING_FIELD: MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }


@MULTIMODAL_REGISTRY.register_processor(
    CropInternVLMultiModalProcessor,
    info=InternVLProcessingInfo,
    dummy_inputs=InternVLDummyInputsBuilder,
)
class CropInternVLChatModel(InternVLChatModel):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        check_vllm(MODEL_TOUCHPOINTS["internvl_chat"])
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.crop_settings = CropSettings.from_hf_config(self.config)
        self.crop_ilp = IlpController.maybe_create(
            self.language_model.model.layers, self.crop_settings, self.config
        )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        plans = pop_plans(kwargs)
        tilings = kwargs.pop(INTERNVL_TILING_FIELD, None)
        embeddings = super().embed_multimodal(**kwargs)
        if plans is None or tilings is None or all(plan is None for plan in plans):
            return embeddings
        # Images and videos come back in the order their kwargs arrived.
        modalities = list(self._parse_and_validate_multimodal_inputs(**kwargs))
        embeddings = list(embeddings)
        first = 0 if modalities[0] == "images" else len(embeddings) - len(plans)
        for index, (plan, tiling) in enumerate(zip(plans, tilings, strict=True)):  # type: ignore[call-overload]
            rows, cols, thumbnail = (int(v) for v in tiling.tolist())
            grids = internvl_grids(self.config, InternVLTiling(rows, cols, bool(thumbnail)))
            embeddings[first + index] = apply_plan_to_grids(
                embeddings[first + index], grids, plan, self.crop_settings
            )
        return embeddings
