"""Where each model family's visual grids lie: pure functions of the model config and image size.

Shared by the vLLM processor (placeholder counts), the model (applying the layout) and the
gateway (reporting how many visual tokens a request would have used), so all three agree.
Families are named by the HF config's `model_type`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crop_vllm.families import family
from crop_vllm.layout import PLCSettings, Region, build_layout


@dataclass(frozen=True)
class Grid:
    """One visual grid of an image; `row_separators` when the family ends each row with a token
    (LLaVA-NeXT's image_newline)."""

    rows: int
    cols: int
    row_separators: bool = False


def llava_grids(config: object) -> list[Grid]:
    """LLaVA-1.5: the image is resized to the tower's size; CLS dropped ('default' strategy)."""
    vision = config.vision_config  # type: ignore[attr-defined]
    side = vision.image_size // vision.patch_size
    return [Grid(side, side)]


def llava_next_grids(config: object, image_height: int, image_width: int) -> list[Grid]:
    """LLaVA-NeXT: [base grid, unpadded AnyRes tile grid], as vLLM and transformers lay them out.

    The base image is the whole picture resized; the unpadded grid covers the picture exactly,
    so one normalized region maps onto both.
    """
    from transformers.image_processing_utils import select_best_resolution

    vision = config.vision_config  # type: ignore[attr-defined]
    side = vision.image_size // vision.patch_size
    best_height, best_width = select_best_resolution(
        (image_height, image_width),
        config.image_grid_pinpoints,  # type: ignore[attr-defined]
    )
    height = side * (best_height // vision.image_size)
    width = side * (best_width // vision.image_size)
    # Remove the letterbox padding, with the same arithmetic as vLLM's
    # LlavaNextProcessingInfo._get_num_unpadded_features.
    if image_width / image_height > width / height:
        new_height = int(round(image_height * (width / image_width), 7))
        height -= 2 * ((height - new_height) // 2)
    else:
        new_width = int(round(image_width * (height / image_height), 7))
        width -= 2 * ((width - new_width) // 2)
    return [Grid(side, side), Grid(height, width, row_separators=True)]


def qwen_grid_from_thw(grid_thw: Sequence[int], merge_size: int) -> Grid:
    """Qwen2.5-VL: the LLM-side grid of one image from its patch grid (t, h, w)."""
    t, h, w = (int(v) for v in grid_thw)
    if t != 1:
        raise ValueError(f"an image has one temporal patch, got t={t}")
    return Grid(h // merge_size, w // merge_size)


def qwen2_5_vl_grids(
    config: object, image_processor: Mapping[str, object], image_height: int, image_width: int
) -> list[Grid]:
    """Qwen2.5-VL: the image is resized to multiples of patch*merge within the pixel bounds."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    vision = config.vision_config  # type: ignore[attr-defined]
    size = image_processor.get("size") or {}
    min_pixels = image_processor.get("min_pixels") or size.get("shortest_edge")  # type: ignore[union-attr]
    max_pixels = image_processor.get("max_pixels") or size.get("longest_edge")  # type: ignore[union-attr]
    height, width = smart_resize(
        height=image_height,
        width=image_width,
        factor=vision.patch_size * vision.spatial_merge_size,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    patches = (1, height // vision.patch_size, width // vision.patch_size)
    return [qwen_grid_from_thw(patches, vision.spatial_merge_size)]


def image_grids(
    config: object, image_processor: Mapping[str, object], image_height: int, image_width: int
) -> list[Grid]:
    """The grids of one image of a given size, for any supported family (`config.model_type`):
    what the gateway predicts before the engine has processed the image."""
    model_type = family(config.model_type).model_type  # type: ignore[attr-defined]
    if model_type == "llava":
        return llava_grids(config)
    if model_type == "llava_next":
        return llava_next_grids(config, image_height, image_width)
    return qwen2_5_vl_grids(config, image_processor, image_height, image_width)


def item_grids(config: object, fields: Mapping[str, Any]) -> list[Grid]:
    """The grids of one processed image item (its multimodal fields as the processor made them):
    what the processor sizes placeholders with, and what the engine plans ILP drops from."""
    model_type = family(config.model_type).model_type  # type: ignore[attr-defined]
    if model_type == "llava":
        return llava_grids(config)
    if model_type == "llava_next":
        height, width = (int(v) for v in fields["image_sizes"].tolist())
        return llava_next_grids(config, height, width)
    merge = config.vision_config.spatial_merge_size  # type: ignore[attr-defined]
    return [qwen_grid_from_thw(fields["image_grid_thw"].tolist(), merge)]


def num_image_tokens(grids: Sequence[Grid], region: Region | None, settings: PLCSettings) -> int:
    """Placeholder count of one image: kept tokens plus a separator per non-empty row."""
    total = 0
    for grid in grids:
        layout = build_layout(grid.rows, grid.cols, region, settings)
        total += len(layout) + (len(layout.row_ends()) if grid.row_separators else 0)
    return total
