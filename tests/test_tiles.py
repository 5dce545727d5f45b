"""Tile-major grids (InternVL): a region is snapped on the whole lattice of tile cells, and each
tile pools the part of it that falls in the tile."""

from hypothesis import given
from hypothesis import strategies as st

from crop_vllm.geometry import Grid, Tile, grid_layout, grid_region_marks, tile_box
from crop_vllm.ilp.plan import image_keep_mask
from crop_vllm.layout import (
    FULL_IMAGE,
    CropMode,
    PLCSettings,
    Region,
    build_layout,
    build_layout_in_box,
    snap_to_grid,
)
from crop_vllm.options import ImagePlan

SIDE = 4


def lattice(tile_rows: int, tile_cols: int) -> list[Grid]:
    """The tiles of a tile_rows x tile_cols lattice of SIDE x SIDE grids, tile by tile."""
    rows, cols = tile_rows * SIDE, tile_cols * SIDE
    return [
        Grid(SIDE, SIDE, tile=Tile(rows, cols, r * SIDE, c * SIDE))
        for r in range(tile_rows)
        for c in range(tile_cols)
    ]


@st.composite
def regions(draw):
    x0, x1 = sorted(draw(st.floats(0, 1)) for _ in range(2))
    y0, y1 = sorted(draw(st.floats(0, 1)) for _ in range(2))
    return Region(x0, y0, x1, y1)


@given(st.integers(1, 3), st.integers(1, 3), regions())
def test_tiles_split_the_regions_lattice_cells_exactly(tile_rows, tile_cols, region):
    box = snap_to_grid(region, tile_rows * SIDE, tile_cols * SIDE)
    inside = set()
    for grid in lattice(tile_rows, tile_cols):
        local = tile_box(grid, region)
        if local is not None:
            inside |= {
                (grid.tile.row0 + r, grid.tile.col0 + c)
                for r in range(local.row0, local.row1)
                for c in range(local.col0, local.col1)
            }
    expected = {(r, c) for r in range(box.row0, box.row1) for c in range(box.col0, box.col1)}
    assert inside == expected


def test_a_tile_the_region_misses_pools_all_its_cells_as_outside():
    far_tile = lattice(2, 2)[3]  # bottom right
    layout = grid_layout(far_tile, Region(0.0, 0.0, 0.5, 0.5), PLCSettings(outside_stride=2))
    assert tile_box(far_tile, Region(0.0, 0.0, 0.5, 0.5)) is None
    assert len(layout) == 4 and not any(token.inside for token in layout.tokens)


def test_a_region_edge_on_a_tile_boundary_touches_only_one_side():
    left, right = lattice(1, 2)
    region = Region(0.0, 0.0, 0.5, 1.0)
    assert tile_box(left, region) is not None
    assert tile_box(right, region) is None


def test_drop_outside_leaves_no_token_in_a_missed_tile():
    layout = build_layout_in_box(SIDE, SIDE, None, PLCSettings(drop_outside=True))
    assert len(layout) == 0


def test_a_grid_without_tile_covers_the_whole_image():
    settings = PLCSettings()
    region = Region(0.1, 0.2, 0.6, 0.7)
    assert grid_layout(Grid(8, 8), region, settings) == build_layout(8, 8, region, settings)
    assert grid_layout(Grid(8, 8), None, settings) == build_layout(8, 8, None, settings)


def test_full_image_keeps_every_tile_whole():
    for grid in lattice(2, 3):
        assert grid_layout(grid, FULL_IMAGE, PLCSettings()).is_identity


def test_plain_ilp_keeps_the_regions_cells_of_each_tile():
    grids = lattice(1, 2)
    region = Region(0.25, 0.0, 0.75, 0.5)  # lattice 4x8: rows 0-2, cols 2-6
    mask = image_keep_mask(grids, ImagePlan(CropMode.ILP, region), PLCSettings())
    left = [r < 2 and c >= 2 for r in range(SIDE) for c in range(SIDE)]
    right = [r < 2 and c < 2 for r in range(SIDE) for c in range(SIDE)]
    assert mask == left + right
    assert [t.inside for t in grid_region_marks(grids[1], region).tokens] == right
