"""The PLC layout function: region -> kept cells -> token count and positions."""

from hypothesis import given
from hypothesis import strategies as st

from crop_vllm.layout import (
    FULL_IMAGE,
    CellBox,
    PLCSettings,
    Region,
    build_layout,
    snap_to_grid,
)

grids = st.tuples(st.integers(1, 24), st.integers(1, 24))
settings_strategy = st.builds(
    PLCSettings,
    inside_stride=st.integers(1, 3),
    outside_stride=st.integers(1, 6),
    drop_outside=st.booleans(),
)


@st.composite
def regions(draw):
    x0, x1 = sorted(draw(st.floats(0, 1)) for _ in range(2))
    y0, y1 = sorted(draw(st.floats(0, 1)) for _ in range(2))
    return Region(x0, y0, x1, y1)


@given(grids, regions(), settings_strategy)
def test_positions_are_unique_cells_inside_the_grid(grid, region, settings):
    rows, cols = grid
    positions = build_layout(rows, cols, region, settings).positions
    assert len(set(positions)) == len(positions)
    assert all(0 <= r < rows and 0 <= c < cols for r, c in positions)


@given(grids, regions(), settings_strategy)
def test_tokens_are_in_raster_order(grid, region, settings):
    positions = build_layout(*grid, region, settings).positions
    assert list(positions) == sorted(positions)


@given(grids, regions(), settings_strategy)
def test_no_token_mixes_inside_and_outside_cells(grid, region, settings):
    rows, cols = grid
    box = snap_to_grid(region, rows, cols)
    for token in build_layout(rows, cols, region, settings).tokens:
        sides = {box.contains(cell // cols, cell % cols) for cell in token.cells}
        assert sides == {token.inside}


@given(grids, regions(), settings_strategy)
def test_every_cell_is_used_once_unless_dropped(grid, region, settings):
    rows, cols = grid
    box = snap_to_grid(region, rows, cols)
    cells = [c for t in build_layout(rows, cols, region, settings).tokens for c in t.cells]
    assert len(cells) == len(set(cells))
    expected = rows * cols - (0 if not settings.drop_outside else rows * cols - cell_count(box))
    assert len(cells) == expected


@given(grids, regions(), settings_strategy)
def test_each_token_position_is_one_of_its_cells(grid, region, settings):
    rows, cols = grid
    for token in build_layout(rows, cols, region, settings).tokens:
        assert token.row * cols + token.col in token.cells


@given(grids, settings_strategy)
def test_no_region_keeps_every_cell_unchanged(grid, settings):
    rows, cols = grid
    layout = build_layout(rows, cols, None, settings)
    assert layout.is_identity
    assert [t.cells for t in layout.tokens] == [(i,) for i in range(rows * cols)]


@given(grids, st.integers(1, 6))
def test_full_image_region_with_inside_stride_one_is_identity(grid, outside_stride):
    layout = build_layout(*grid, FULL_IMAGE, PLCSettings(outside_stride=outside_stride))
    assert layout.is_identity


def test_quarter_region_with_outside_stride_four_on_8x8():
    # Top-left quarter: 16 cells kept; the other three 4x4 windows pool to one token each.
    layout = build_layout(8, 8, Region(0, 0, 0.5, 0.5), PLCSettings(outside_stride=4))
    assert len(layout) == 16 + 3


def test_dropping_outside_keeps_only_the_region_cells():
    layout = build_layout(8, 8, Region(0.25, 0.25, 0.5, 0.75), PLCSettings(drop_outside=True))
    assert len(layout) == 2 * 4
    assert all(t.inside for t in layout.tokens)


def test_window_straddling_the_region_pools_only_its_outside_cells():
    # Region = column 0 of a 1x4 grid; the outside window (cols 0..3) holds cols 1..3 only.
    layout = build_layout(1, 4, Region(0, 0, 0.25, 1), PLCSettings(outside_stride=4))
    assert [t.cells for t in layout.tokens] == [(0,), (1, 2, 3)]


def test_snapping_is_outward_and_exact_on_cell_borders():
    assert snap_to_grid(Region(0.25, 0.25, 0.5, 0.5), 8, 8) == CellBox(2, 2, 4, 4)
    assert snap_to_grid(Region(0.26, 0.2, 0.51, 0.49), 8, 8) == CellBox(1, 2, 4, 5)


def test_degenerate_region_snaps_to_one_cell():
    assert snap_to_grid(Region(1.0, 1.0, 1.0, 1.0), 8, 8) == CellBox(7, 7, 8, 8)
    assert cell_count(snap_to_grid(Region(0.3, 0.3, 0.3, 0.3), 8, 8)) == 1


def test_cellbox_inclusive_matches_the_papers_8x8_form():
    assert snap_to_grid(Region(0, 0.5, 0.25, 1), 8, 8).inclusive() == (0, 4, 1, 7)


def test_row_ends_mark_the_last_token_of_each_nonempty_row():
    layout = build_layout(4, 4, Region(0, 0, 0.5, 0.5), PLCSettings(drop_outside=True))
    assert layout.row_ends() == (1, 3)


def cell_count(box) -> int:
    return (box.row1 - box.row0) * (box.col1 - box.col0)
