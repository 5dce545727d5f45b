"""Which prompt positions a request drops from layer K on, from its multimodal features.

One function for every caller: the worker (to compact each step) and, with the KV saving, the
scheduler (to size the compacted KV allocation). Both see the same `mm_features` (each image's
processed fields and placeholder range) and the same HF config, so they agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from vllm.multimodal.inputs import MultiModalFeatureSpec

from crop_vllm.geometry import item_grids
from crop_vllm.ilp.plan import dropped_positions, image_keep_mask
from crop_vllm.models.processor import MODE_FIELD, REGION_FIELD, decode_plan_field
from crop_vllm.options import CropSettings


def request_drops(
    mm_features: Sequence[MultiModalFeatureSpec],
    num_prompt_tokens: int,
    hf_config: object,
    settings: CropSettings,
) -> np.ndarray:
    """Sorted prompt positions that layers >= K drop for one request (empty: none).

    The last prompt token is never dropped, even when it is an image placeholder (a raw prompt
    that ends with an image): the first output token is sampled from its final hidden state.
    """
    placements = []
    for feature in mm_features:
        data = feature.data
        if feature.modality != "image" or data is None or REGION_FIELD not in data:
            continue
        plan = decode_plan_field(data[REGION_FIELD].data, data[MODE_FIELD].data)
        if plan is None or not plan.mode.uses_ilp:
            continue
        grids = item_grids(hf_config, {key: item.data for key, item in data.items()})
        mask = image_keep_mask(grids, plan, settings.plc)
        placeholder = feature.mm_position
        if placeholder.is_embed is None:
            positions = placeholder.offset + np.arange(placeholder.length)
        else:
            positions = placeholder.offset + np.flatnonzero(placeholder.is_embed.numpy())
        if len(positions) != len(mask):
            raise ValueError(
                f"an image has {len(positions)} placeholder tokens but its ILP layout "
                f"{len(mask)}: the processor and the ILP plan disagree"
            )
        placements.append((positions, mask))
    drops = dropped_positions(placements)
    return drops[drops < num_prompt_tokens - 1]
