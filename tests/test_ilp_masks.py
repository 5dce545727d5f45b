"""Which tokens ILP keeps, written out by hand per family: the oracle of the engine tests
(`tests/reference_ilp.py`) takes its keep mask from the product, so these expectations are what
stands between a wrong mask and every engine test passing.

Each expectation is derived from the family's geometry on its tiny checkpoint (the derivation is
in the comments), never from the plugin's code: the image is 224 x 160 (w x h), the regions snap
outward to whole cells (a cell is kept when the region overlaps it).
"""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from crop_vllm.families import family
from crop_vllm.geometry import image_grids, image_processor_settings
from crop_vllm.ilp.drops import request_drops
from crop_vllm.ilp.plan import image_keep_mask
from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings, ImagePlan
from crop_vllm.testing.photos import picture
from tests.engine_support import BORDER, CROP_ARCH, ONE_CELL, QUARTER, processed, request

WIDTH, HEIGHT = 224, 160


def cells(cols: int, rows, columns, offset: int = 0) -> set[int]:
    """Indices of the cells (row, col) of a row-major grid `cols` wide, shifted by `offset`."""
    return {offset + row * cols + col for row in rows for col in columns}


def kept(arch: str, tiny_checkpoint, region: Region) -> set[int]:
    """The indices of the image tokens ILP keeps for a WIDTH x HEIGHT image."""
    checkpoint = tiny_checkpoint(arch)
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=family(arch).remote_code)
    grids = image_grids(config, image_processor_settings(checkpoint, config), HEIGHT, WIDTH)
    mask = image_keep_mask(grids, ImagePlan(CropMode.ILP, region), CropSettings().plc)
    return {index for index, keep in enumerate(mask) if keep}


def test_llava_keeps_the_region_cells_of_its_8x8_grid(tiny_checkpoint):
    # The tower's 112 px, 14 px patches: 8 x 8 whatever the image. QUARTER: rows and cols 0-3;
    # BORDER x 0.8-1 -> cols 6-7 (0.8 * 8 = 6.4), y 0-0.3 -> rows 0-2 (2.4); ONE_CELL
    # 0.41-0.42 -> 3.28-3.36: cell (3, 3).
    assert kept("llava", tiny_checkpoint, QUARTER) == cells(8, range(4), range(4))
    assert kept("llava", tiny_checkpoint, BORDER) == cells(8, range(3), range(6, 8))
    assert kept("llava", tiny_checkpoint, ONE_CELL) == {3 * 8 + 3}


def test_llava_next_keeps_region_cells_of_both_grids_and_the_separators_of_kept_rows(
    tiny_checkpoint,
):
    # Base: 8 x 8, as LLaVA. AnyRes: pinpoint 224 x 224 (fits 224 x 160 best) -> 16 x 16 cells,
    # letterbox removed: 160 * 16 / 224 = 11.4 -> 11, so 16 - 2 * ((16 - 11) // 2) = 12 rows of
    # 16 cells, each row followed by its newline token (17 tokens a row, from token 64 on).
    def rows_with_newline(rows, columns) -> set[int]:
        return {64 + row * 17 + col for row in rows for col in [*columns, 16]}

    # QUARTER: base rows/cols 0-3; AnyRes rows 0-5 (0.5 * 12), cols 0-7.
    assert kept("llava_next", tiny_checkpoint, QUARTER) == cells(
        8, range(4), range(4)
    ) | rows_with_newline(range(6), range(8))
    # ONE_CELL: base (3, 3); AnyRes rows 4.92-5.04 -> 4 and 5, cols 6.56-6.72 -> 6.
    assert kept("llava_next", tiny_checkpoint, ONE_CELL) == {27} | rows_with_newline(
        range(4, 6), [6]
    )
    # BORDER: base rows 0-2, cols 6-7; AnyRes cols 12.8-16 -> 12-15, rows 0-3.6 -> 0-3.
    assert kept("llava_next", tiny_checkpoint, BORDER) == cells(
        8, range(3), range(6, 8)
    ) | rows_with_newline(range(4), range(12, 16))


def test_qwen2_5_vl_keeps_region_cells_of_the_merged_grid(tiny_checkpoint):
    # 14 px patches merged 2 x 2: the image resizes to multiples of 28, 224 x 168 (160 / 28 =
    # 5.7 -> 6), so 6 rows x 8 cols. QUARTER: rows 0-2, cols 0-3; BORDER: cols 6-7, rows 0-1
    # (0.3 * 6 = 1.8); ONE_CELL: row 2 (2.46-2.52), col 3 (3.28-3.36).
    assert kept("qwen2_5_vl", tiny_checkpoint, QUARTER) == cells(8, range(3), range(4))
    assert kept("qwen2_5_vl", tiny_checkpoint, BORDER) == cells(8, range(2), range(6, 8))
    assert kept("qwen2_5_vl", tiny_checkpoint, ONE_CELL) == {2 * 8 + 3}


def test_qwen3_vl_keeps_region_cells_of_the_upscaled_merged_grid(tiny_checkpoint):
    # 16 px patches merged 2 x 2, multiples of 32: 224 x 160 has 35,840 pixels, under the
    # 65,536 minimum, so both sides scale by sqrt(65536 / 35840) = 1.352 and round up: 7 rows
    # (5 * 1.352 = 6.8) x 10 cols (7 * 1.352 = 9.5). QUARTER: rows 0-3, cols 0-4; ONE_CELL:
    # row 2 (2.87-2.94), col 4 (4.1-4.2).
    assert kept("qwen3_vl", tiny_checkpoint, QUARTER) == cells(10, range(4), range(5))
    assert kept("qwen3_vl", tiny_checkpoint, ONE_CELL) == {2 * 10 + 4}


def test_internvl_splits_the_region_over_its_tiles_and_keeps_it_on_the_thumbnail(
    tiny_checkpoint,
):
    # 112 px tiles, at most 6: aspect 1.4 is closest to 3 x 2 tiles (1.5), plus a thumbnail.
    # 7 px patches, pixel shuffle 0.5: 8 x 8 tokens a tile (64), in raster order, tiles first;
    # together the tiles are a 16 x 24 lattice. Thumbnail: tokens 384-447, 8 x 8 of the image.
    # QUARTER: lattice rows 0-7, cols 0-11 -> all of tile (0, 0), cols 0-3 of tile (0, 1).
    assert kept("internvl_chat", tiny_checkpoint, QUARTER) == (
        set(range(64)) | cells(8, range(8), range(4), 64) | cells(8, range(4), range(4), 384)
    )
    # BORDER: lattice cols 19.2-24 -> 19-23, rows 0-4.8 -> 0-4: cols 3-7 of tile (0, 2), rows
    # 0-4; thumbnail cols 6-7, rows 0-2.
    assert kept("internvl_chat", tiny_checkpoint, BORDER) == cells(
        8, range(5), range(3, 8), 128
    ) | cells(8, range(3), range(6, 8), 384)


@pytest.mark.parametrize("arch", ["llava", "qwen2_5_vl"])
def test_two_images_drop_each_their_own_outside_at_their_own_prompt_positions(
    arch, tiny_checkpoint
):
    """Through the real CROP processor: the drops of a request are each image's outside
    tokens, at that image's placeholder positions in the prompt."""
    checkpoint = tiny_checkpoint(arch)
    images = [picture(0), picture(1)]  # both WIDTH x HEIGHT
    prompt = request(
        arch,
        images,
        "Compare them.",
        crop_mode="ilp",
        crop_regions=[QUARTER.as_list(), ONE_CELL.as_list()],
    )
    inputs = processed(checkpoint, CROP_ARCH[arch], prompt, crop_enable_ilp=True)
    ids = inputs["prompt_token_ids"]
    config = AutoConfig.from_pretrained(checkpoint)
    image_token = ids[inputs["mm_placeholders"]["image"][0].offset]
    # Where each image's tokens are, read off the prompt's tokens alone.
    runs, start = [], None
    for position, token in enumerate([*ids, None]):
        if token == image_token and start is None:
            start = position
        elif token != image_token and start is not None:
            runs.append(range(start, position))
            start = None
    keep_quarter, keep_one_cell = (
        (cells(8, range(4), range(4)), {27})
        if arch == "llava"
        else (cells(8, range(3), range(4)), {19})
    )
    expected = [p for i, p in enumerate(runs[0]) if i not in keep_quarter] + [
        p for i, p in enumerate(runs[1]) if i not in keep_one_cell
    ]
    drops = request_drops(features(inputs), len(ids), config, CropSettings())
    assert drops.tolist() == expected


def features(inputs) -> list:
    """The request's multimodal features, as the engine builds them from processor output."""
    from vllm.multimodal.inputs import MultiModalFeatureSpec

    return [
        MultiModalFeatureSpec(
            data=item, modality="image", identifier=str(index), mm_position=placeholder
        )
        for index, (item, placeholder) in enumerate(
            zip(inputs["mm_kwargs"]["image"], inputs["mm_placeholders"]["image"], strict=True)
        )
    ]
