"""The CROP processor: what every family's vLLM multimodal processor gains, once.

Validation, hashing and placeholder counts live here; a family's processor is this mixin in
front of the stock one (its grids come from `crop_vllm.geometry.item_grids`).

How a request's regions travel:
1. `apply` validates `crop_mode` / `crop_regions` once and rewrites them canonically.
2. `_get_mm_hashes` folds each image's own plan into that image's hash, so the processor cache,
   the encoder cache and prefix-cache block hashes never mix up regions between images or
   requests, and a partial cache hit reprocesses only the missing images with their own plans.
3. `_apply_hf_processor_main` strips the keys before the HF processor sees them and attaches
   per-image fields `crop_region` / `crop_mode` (integers, so no dtype cast can move a
   region across a cell boundary between the processor and the worker).
4. `_get_prompt_updates` sizes each image's placeholders from those fields (`crop_grids`, from
   `crop_vllm.geometry`), keeping any tokens around the embeddings (`with_embed_count`), and
   the model applies the same layout in `embed_multimodal` (`crop_vllm.models.pooling`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import cached_property

import torch
from vllm.multimodal.hasher import MultiModalHasher
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import PromptUpdate, PromptUpdateDetails
from vllm.multimodal.processing.processor import PromptUpdateInfo

from crop_vllm.geometry import Grid, item_grids, num_image_tokens
from crop_vllm.layout import CropMode, Region
from crop_vllm.options import (
    CropSettings,
    ImagePlan,
    decode_plans,
    encode_plans,
    parse_request,
    strip_request_keys,
)

REGION_FIELD = "crop_region"
MODE_FIELD = "crop_mode"
_FIXED_POINT = 1_000_000  # regions cross processes as integer millionths
_MODES = list(CropMode)


def encode_plan_fields(plans: Sequence[ImagePlan | None]) -> dict[str, torch.Tensor]:
    """Per-image processed fields for `plans` (-1 coordinates: no region)."""
    regions = [
        [-1] * 4
        if plan is None or plan.region is None
        else [round(v * _FIXED_POINT) for v in plan.region.as_list()]
        for plan in plans
    ]
    modes = [_MODES.index(CropMode.OFF if plan is None else plan.mode) for plan in plans]
    return {
        REGION_FIELD: torch.tensor(regions, dtype=torch.int64).reshape(len(plans), 4),
        MODE_FIELD: torch.tensor(modes, dtype=torch.int64),
    }


def decode_plan_field(region: torch.Tensor, mode: torch.Tensor) -> ImagePlan | None:
    """One image's plan back from its processed fields."""
    values = [int(v) for v in region.reshape(-1).tolist()]
    crop_mode = _MODES[int(mode)]
    if values[0] < 0 or crop_mode is CropMode.OFF:
        return None
    return ImagePlan(crop_mode, Region(*(v / _FIXED_POINT for v in values)))


def with_embed_count(content: PromptUpdateInfo, count: int) -> PromptUpdateInfo:
    """An image's stock placeholder with `count` embedding tokens instead of its own.

    A plain token list is all embeddings (LLaVA, Qwen); `PromptUpdateDetails` may wrap them in
    tokens that are not (InternVL's `<img>` ... `</img>`): the run of embedding tokens is
    resized and the wrapping kept.
    """
    if not isinstance(content, PromptUpdateDetails):
        return content[:1] * count
    full = list(content.full)
    embeds = [True] * len(full) if content.is_embed is None else content.is_embed(full).tolist()
    first = embeds.index(True)
    last = len(embeds) - 1 - embeds[::-1].index(True)
    if not all(embeds[first : last + 1]) or len(set(full[first : last + 1])) != 1:
        raise NotImplementedError(
            "CROP resizes one run of identical embedding tokens per image; this placeholder "
            "has another shape"
        )
    return replace(content, full=full[:first] + full[first : first + 1] * count + full[last + 1 :])


def pop_plans(kwargs: dict[str, object]) -> list[ImagePlan | None] | None:
    """Take the per-image plans out of a batch of model kwargs (None: no CROP fields)."""
    regions, modes = kwargs.pop(REGION_FIELD, None), kwargs.pop(MODE_FIELD, None)
    if regions is None or modes is None:
        return None
    return [decode_plan_field(r, m) for r, m in zip(regions, modes, strict=True)]  # type: ignore[call-overload]


class CropProcessorMixin:
    """Mixed in front of a vLLM multimodal processor class (see the module docstring)."""

    info: object  # provided by BaseMultiModalProcessor

    def crop_grids(self, out_item: Mapping[str, object]) -> list[Grid]:
        """The visual grids of one processed image item."""
        return item_grids(self.info.get_hf_config(), out_item)  # type: ignore[attr-defined]

    @cached_property
    def crop_settings(self) -> CropSettings:
        return CropSettings.from_hf_config(self.info.get_hf_config())  # type: ignore[attr-defined]

    def apply(self, inputs, timing_ctx):  # type: ignore[no-untyped-def]
        num_images = inputs.mm_data_items.get_count("image", strict=False)
        plans = parse_request(inputs.hf_processor_mm_kwargs, num_images, self.crop_settings)
        kwargs = {**strip_request_keys(inputs.hf_processor_mm_kwargs), **encode_plans(plans)}
        return super().apply(replace(inputs, hf_processor_mm_kwargs=kwargs), timing_ctx)  # type: ignore[misc]

    def _get_mm_hashes(self, inputs):  # type: ignore[no-untyped-def]
        stripped = replace(
            inputs, hf_processor_mm_kwargs=strip_request_keys(inputs.hf_processor_mm_kwargs)
        )
        hashes = dict(super()._get_mm_hashes(stripped))  # type: ignore[misc]
        plans = decode_plans(inputs.hf_processor_mm_kwargs)
        if plans is None or "image" not in hashes:
            return hashes
        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm  # type: ignore[attr-defined]
        hashes["image"] = [
            mm_hash
            if plan.region is None
            else MultiModalHasher.hash_kwargs(
                algorithm,
                mm_hash=mm_hash,
                crop_mode=plan.mode.value,
                crop_region=plan.region.as_list(),
            )
            for mm_hash, plan in zip(hashes["image"], plans, strict=True)
        ]
        return hashes

    def _get_cache_missing_processor_kwargs(self, inputs, mm_is_cached):  # type: ignore[no-untyped-def]
        kwargs = super()._get_cache_missing_processor_kwargs(inputs, mm_is_cached)  # type: ignore[misc]
        regions = kwargs.get("crop_regions")
        if regions is None:
            return kwargs
        hits = mm_is_cached.get("image", [False] * len(regions))
        return {
            **kwargs,
            "crop_regions": [r for r, hit in zip(regions, hits, strict=True) if not hit],
        }

    def _apply_hf_processor_main(
        self, mm_items: MultiModalDataItems, hf_kwargs: Mapping[str, object]
    ):
        processed = super()._apply_hf_processor_main(mm_items, strip_request_keys(hf_kwargs))  # type: ignore[misc]
        if not isinstance(mm_items.get("image"), ImageProcessorItems):
            return processed  # precomputed embeddings are never pruned
        count = mm_items.get_count("image")
        plans = decode_plans(hf_kwargs) or [None] * count
        processed.update(encode_plan_fields(plans))
        return processed

    def _get_mm_fields_config(
        self, hf_inputs, hf_processor_mm_kwargs
    ) -> Mapping[str, MultiModalFieldConfig]:  # type: ignore[no-untyped-def]
        return {
            **super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs),  # type: ignore[misc]
            REGION_FIELD: MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            MODE_FIELD: MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }

    def _get_mm_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):  # type: ignore[no-untyped-def]
        stripped = strip_request_keys(hf_processor_mm_kwargs)
        return super()._get_mm_prompt_updates(mm_items, stripped, out_mm_kwargs)  # type: ignore[misc]

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)  # type: ignore[misc]
        return [
            self._crop_update(u, out_mm_kwargs) if u.modality == "image" else u for u in updates
        ]

    def _crop_update(self, update: PromptUpdate, out_mm_kwargs: MultiModalKwargsItems):
        stock = update.content
        settings = self.crop_settings

        def replacement(item_idx: int):
            tokens = stock(item_idx) if callable(stock) else stock
            item = out_mm_kwargs["image"][item_idx]
            if item is None or REGION_FIELD not in item:
                return tokens
            plan = decode_plan_field(item[REGION_FIELD].data, item[MODE_FIELD].data)
            if plan is None or plan.plc_region is None:
                return tokens
            data = {key: elem.data for key, elem in item.items()}
            count = num_image_tokens(self.crop_grids(data), plan.plc_region, settings.plc)
            return with_embed_count(tokens, count)

        return replace(update, replacement=replacement)
