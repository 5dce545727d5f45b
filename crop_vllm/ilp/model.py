"""The model side of ILP: what a CROP model with `crop_enable_ilp` carries as `crop_ilp`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from vllm.logger import init_logger
from vllm.multimodal.inputs import MultiModalFeatureSpec

from crop_vllm.geometry import Grid
from crop_vllm.ilp.decoder import DecoderSplit
from crop_vllm.ilp.patches import runner
from crop_vllm.ilp.plan import dropped_positions, image_keep_mask
from crop_vllm.models.utils import MODE_FIELD, REGION_FIELD, decode_plan_field
from crop_vllm.options import CropSettings

logger = init_logger(__name__)

#: Grids of one image from its processed fields (family-specific).
ImageGrids = Callable[[Mapping[str, torch.Tensor]], list[Grid]]


class IlpModel:
    """Splits the decoder at layer K and tells the runner which prompt positions a request drops."""

    def __init__(self, layers: nn.ModuleList, settings: CropSettings, image_grids: ImageGrids):
        runner.apply()
        self.layer = settings.ilp_layer
        self.settings = settings
        self.image_grids = image_grids
        self.split = DecoderSplit(layers, settings.ilp_layer)

    @classmethod
    def maybe_create(
        cls, layers: nn.ModuleList, settings: CropSettings, image_grids: ImageGrids
    ) -> IlpModel | None:
        """None when ILP is off on this server, or K is past the last layer (nothing to prune)."""
        if not settings.ilp_enabled:
            return None
        if settings.ilp_layer >= len(layers):
            logger.info(
                "CROP ILP: crop_ilp_layer %d >= %d decoder layers, ILP keeps every token",
                settings.ilp_layer,
                len(layers),
            )
            return None
        return cls(layers, settings, image_grids)

    def request_drops(
        self, req_id: str, mm_features: Sequence[MultiModalFeatureSpec]
    ) -> np.ndarray:
        """Sorted prompt positions that layers >= K drop for one request (logged at debug)."""
        placements = []
        visual = kept = 0
        for feature in mm_features:
            data = feature.data
            if feature.modality != "image" or data is None or REGION_FIELD not in data:
                continue
            plan = decode_plan_field(data[REGION_FIELD].data, data[MODE_FIELD].data)
            if plan is None or not plan.mode.uses_ilp:
                continue
            grids = self.image_grids({key: item.data for key, item in data.items()})
            mask = image_keep_mask(grids, plan, self.settings.plc)
            placeholder = feature.mm_position
            if placeholder.is_embed is None:
                positions = placeholder.offset + np.arange(placeholder.length)
            else:
                positions = placeholder.offset + np.flatnonzero(placeholder.is_embed.numpy())
            if len(positions) != len(mask):
                raise ValueError(
                    f"request {req_id}: image has {len(positions)} placeholder tokens, "
                    f"its ILP layout {len(mask)}"
                )
            placements.append((positions, mask))
            visual += len(mask)
            kept += sum(mask)
        if placements:
            logger.debug(
                "CROP ILP request %s: %d of %d visual tokens kept from layer %d on",
                req_id,
                kept,
                visual,
                self.layer,
            )
        return dropped_positions(placements)
