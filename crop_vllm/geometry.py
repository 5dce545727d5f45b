"""Where each model family's visual grids lie: pure functions of the model config and image size.

Shared by the vLLM processor (placeholder counts), the model (applying the layout) and the
gateway (reporting how many visual tokens a request would have used), so all three agree.
Families are named by the HF config's `model_type`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crop_vllm.families import family
from crop_vllm.layout import (
    CellBox,
    Layout,
    PLCSettings,
    Region,
    box_marked_layout,
    build_layout,
    build_layout_in_box,
    snap_to_grid,
)

#: The processed field (per image: tile rows, tile columns, thumbnail 0/1) that the CROP InternVL
#: processor adds, since InternVL's own fields keep only the tile count.
INTERNVL_TILING_FIELD = "crop_internvl_tiling"


@dataclass(frozen=True)
class Tile:
    """Where a grid lies when it is one tile of a lattice of cells that covers the image
    (InternVL): the lattice's size and the tile's first row and column in it."""

    lattice_rows: int
    lattice_cols: int
    row0: int
    col0: int


@dataclass(frozen=True)
class Grid:
    """One visual grid of an image; `row_separators` when the family ends each row with a token
    (LLaVA-NeXT's image_newline); `tile` when the grid covers only its tile of the image
    (otherwise it covers the whole image)."""

    rows: int
    cols: int
    row_separators: bool = False
    tile: Tile | None = None


def tile_box(grid: Grid, region: Region) -> CellBox | None:
    """The cells of `grid` inside `region` (None: none). A tile takes its part of the region's
    cells snapped on the whole lattice, so tiles split the region without gaps or overlaps."""
    tile = grid.tile
    if tile is None:
        return snap_to_grid(region, grid.rows, grid.cols)
    box = snap_to_grid(region, tile.lattice_rows, tile.lattice_cols)
    row0, row1 = max(box.row0, tile.row0), min(box.row1, tile.row0 + grid.rows)
    col0, col1 = max(box.col0, tile.col0), min(box.col1, tile.col0 + grid.cols)
    if row0 >= row1 or col0 >= col1:
        return None
    return CellBox(row0 - tile.row0, col0 - tile.col0, row1 - tile.row0, col1 - tile.col0)


def grid_layout(grid: Grid, region: Region | None, settings: PLCSettings) -> Layout:
    """The PLC layout of one grid (`region=None`: every cell kept as it is)."""
    if region is None:
        return build_layout(grid.rows, grid.cols, None, settings)
    return build_layout_in_box(grid.rows, grid.cols, tile_box(grid, region), settings)


def grid_region_marks(grid: Grid, region: Region) -> Layout:
    """Every cell of one grid as its own token, `inside` telling whether the region covers it."""
    return box_marked_layout(grid.rows, grid.cols, tile_box(grid, region))


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
    """Qwen2.5-VL, Qwen3-VL: the LLM-side grid of one image from its patch grid (t, h, w)."""
    t, h, w = (int(v) for v in grid_thw)
    if t != 1:
        raise ValueError(f"an image has one temporal patch, got t={t}")
    return Grid(h // merge_size, w // merge_size)


def qwen2_5_vl_grids(
    config: object, image_processor: Mapping[str, object], image_height: int, image_width: int
) -> list[Grid]:
    """Qwen2.5-VL, Qwen3-VL: the image is resized to multiples of patch*merge within the pixel
    bounds (patch 14 and 16 respectively, read from the config)."""
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


@dataclass(frozen=True)
class InternVLTiling:
    """How InternVL cuts one image: a rows x cols lattice of square tiles (the image resized to
    it), plus a thumbnail of the whole image when there is more than one tile."""

    rows: int
    cols: int
    thumbnail: bool


def internvl_tiling(
    image_height: int,
    image_width: int,
    tile_size: int,
    min_tiles: int,
    max_tiles: int,
    use_thumbnail: bool,
) -> InternVLTiling:
    """The tiling vLLM's InternVL processor gives an image (its own target-ratio search)."""
    from vllm.transformers_utils.processors.internvl import (
        calculate_internvl_targets,
        get_internvl_target_ratios,
    )

    _, width, height = calculate_internvl_targets(
        orig_width=image_width,
        orig_height=image_height,
        target_ratios=get_internvl_target_ratios(min_tiles, max_tiles),
        image_size=tile_size,
        use_thumbnail=False,
    )
    rows, cols = height // tile_size, width // tile_size
    return InternVLTiling(rows, cols, use_thumbnail and rows * cols != 1)


def internvl_config_tiling(config: object, image_height: int, image_width: int) -> InternVLTiling:
    """`internvl_tiling` with the checkpoint's own tiling settings (no per-request overrides)."""
    from vllm.transformers_utils.processors.internvl import resolve_internvl_min_max_num

    min_tiles, max_tiles = resolve_internvl_min_max_num(
        min_dynamic_patch=config.min_dynamic_patch,  # type: ignore[attr-defined]
        max_dynamic_patch=config.max_dynamic_patch,  # type: ignore[attr-defined]
        dynamic_image_size=config.dynamic_image_size,  # type: ignore[attr-defined]
        use_thumbnail=False,  # counted by internvl_tiling
    )
    return internvl_tiling(
        image_height,
        image_width,
        config.vision_config.image_size,  # type: ignore[attr-defined]
        min_tiles,
        max_tiles,
        config.use_thumbnail,  # type: ignore[attr-defined]
    )


def internvl_grids(config: object, tiling: InternVLTiling) -> list[Grid]:
    """InternVL: each tile's grid (pixel shuffle merges 2x2 patches), tile by tile in raster
    order, then the thumbnail's grid; a tile's grid covers only its part of the image."""
    vision = config.vision_config  # type: ignore[attr-defined]
    side = round(vision.image_size // vision.patch_size * config.downsample_ratio)  # type: ignore[attr-defined]
    lattice_rows, lattice_cols = tiling.rows * side, tiling.cols * side
    grids = [
        Grid(side, side, tile=Tile(lattice_rows, lattice_cols, row * side, col * side))
        for row in range(tiling.rows)
        for col in range(tiling.cols)
    ]
    return grids + ([Grid(side, side)] if tiling.thumbnail else [])


def image_processor_settings(model: str | Path, config: object) -> dict[str, Any]:
    """The image-processor settings of a checkpoint that `image_grids` reads (InternVL chat
    checkpoints have no HF image processor: their tiling settings are in the model config)."""
    if family(config.model_type).model_type == "internvl_chat":  # type: ignore[attr-defined]
        return {}
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model).to_dict()


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
    if model_type == "internvl_chat":
        return internvl_grids(config, internvl_config_tiling(config, image_height, image_width))
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
    if model_type == "internvl_chat":
        rows, cols, thumbnail = (int(v) for v in fields[INTERNVL_TILING_FIELD].tolist())
        grids = internvl_grids(config, InternVLTiling(rows, cols, bool(thumbnail)))
        if len(grids) != int(fields["image_num_patches"]):
            raise ValueError(
                f"InternVL image has {int(fields['image_num_patches'])} tiles, its tiling "
                f"{rows}x{cols} (thumbnail {bool(thumbnail)}) gives {len(grids)}"
            )
        return grids
    merge = config.vision_config.spatial_merge_size  # type: ignore[attr-defined]
    return [qwen_grid_from_thw(fields["image_grid_thw"].tolist(), merge)]


def num_image_tokens(grids: Sequence[Grid], region: Region | None, settings: PLCSettings) -> int:
    """Placeholder count of one image: kept tokens plus a separator per non-empty row."""
    total = 0
    for grid in grids:
        layout = grid_layout(grid, region, settings)
        total += len(layout) + (len(layout.row_ends()) if grid.row_separators else 0)
    return total
