"""The pure part of ILP: which prompt tokens layers >= K drop, and how a step compacts."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from crop_vllm.geometry import Grid, num_image_tokens
from crop_vllm.ilp.plan import compact_step, dropped_positions, image_keep_mask
from crop_vllm.layout import CropMode, PLCSettings, Region, build_layout
from crop_vllm.options import ImagePlan

QUARTER = Region(0.0, 0.0, 0.5, 0.5)
SETTINGS = PLCSettings()


def test_plain_ilp_keeps_the_region_cells_of_the_full_grid():
    mask = image_keep_mask([Grid(4, 4)], ImagePlan(CropMode.ILP, QUARTER), SETTINGS)
    assert len(mask) == 16
    assert [i for i, keep in enumerate(mask) if keep] == [0, 1, 4, 5]


def test_plc_ilp_keeps_the_inside_tokens_of_the_plc_layout():
    plan = ImagePlan(CropMode.PLC_ILP, QUARTER)
    layout = build_layout(8, 8, QUARTER, SETTINGS)
    mask = image_keep_mask([Grid(8, 8)], plan, SETTINGS)
    assert mask == [token.inside for token in layout.tokens]
    assert sum(mask) == 16 and len(mask) == len(layout)


def test_row_separators_are_kept_for_rows_that_keep_a_token():
    # 2x2 region cells of a 4x4 grid with a newline per row: rows 0-1 keep 2 cells + newline.
    mask = image_keep_mask(
        [Grid(4, 4, row_separators=True)], ImagePlan(CropMode.ILP, QUARTER), SETTINGS
    )
    assert len(mask) == 4 * 5
    assert mask[:5] == [True, True, False, False, True]
    assert mask[10:] == [False] * 10


def test_plc_only_and_no_plan_keep_everything():
    grids = [Grid(8, 8), Grid(4, 6, row_separators=True)]
    plc = image_keep_mask(grids, ImagePlan(CropMode.PLC, QUARTER), SETTINGS)
    assert all(plc)
    assert len(plc) == num_image_tokens(grids, QUARTER, SETTINGS)
    assert image_keep_mask(grids, None, SETTINGS) == [True] * (64 + 4 * 7)


def test_dropped_positions_are_sorted_prompt_positions():
    drops = dropped_positions([([10, 11, 12], [True, False, False]), ([3, 4], [False, True])])
    assert drops.tolist() == [3, 11, 12]


def test_step_without_drops_is_the_stock_step():
    assert compact_step([np.zeros(0, np.int64)] * 2, np.array([0, 5]), np.array([4, 1])) is None


def test_prefill_and_decode_compaction():
    drops = [np.array([2, 3, 5]), np.zeros(0, np.int64)]
    # Request 0 prefills positions 0..7, request 1 decodes position 9.
    step = compact_step(drops, np.array([0, 9]), np.array([8, 1]))
    assert step.kept_rows.tolist() == [0, 1, 4, 6, 7, 8]
    assert step.kept_compact_positions.tolist() == [0, 1, 2, 3, 4, 9]
    assert step.kept_request.tolist() == [0, 0, 0, 0, 0, 1]
    assert step.requests.tolist() == [0, 1]
    assert step.query_start_loc.tolist() == [0, 5, 6]
    assert step.seq_lens.tolist() == [5, 10]
    # Its next decode step: position 8 sits at compacted position 5.
    step = compact_step(drops[:1], np.array([8]), np.array([1]))
    assert step.kept_compact_positions.tolist() == [5] and step.seq_lens.tolist() == [6]


def test_a_step_of_only_dropped_tokens_keeps_no_request():
    step = compact_step([np.arange(4, 12)], np.array([4]), np.array([4]))
    assert step.num_tokens == 0
    assert step.requests.tolist() == [] and step.query_start_loc.tolist() == [0]


def test_a_request_without_kept_tokens_leaves_the_compacted_batch():
    """Request 1's chunk lies inside its dropped run: attention must never see its empty
    query, so the compacted batch holds requests 0 and 2 only."""
    drops = [np.array([1]), np.arange(4, 12), np.zeros(0, np.int64)]
    step = compact_step(drops, np.array([0, 4, 7]), np.array([3, 4, 1]))
    assert step.requests.tolist() == [0, 2]
    assert step.kept_rows.tolist() == [0, 2, 7]
    assert step.kept_request.tolist() == [0, 0, 2]
    assert step.query_start_loc.tolist() == [0, 2, 3]
    assert step.seq_lens.tolist() == [2, 8]


@given(
    st.lists(st.booleans(), min_size=1, max_size=40),
    st.lists(st.integers(1, 9), min_size=1, max_size=8),
)
def test_chunks_compact_like_the_whole_prompt(keep, chunk_sizes):
    """Any split into chunks gives the same compacted positions as one prefill: c(p) is p minus
    the dropped tokens before p, and each chunk ends at the compacted length so far."""
    drops = np.flatnonzero(~np.array(keep))
    expected = np.cumsum(keep) - 1
    start = 0
    for size in chunk_sizes:
        size = min(size, len(keep) - start)
        if size <= 0:
            break
        step = compact_step([drops], np.array([start]), np.array([size]))
        if step is None:
            assert len(drops) == 0
        else:
            kept = [p for p in range(start, start + size) if keep[p]]
            assert step.kept_rows.tolist() == [p - start for p in kept]
            assert step.kept_compact_positions.tolist() == [expected[p] for p in kept]
            compacted_length = [int(np.sum(keep[: start + size]))] if kept else []
            assert step.seq_lens.tolist() == compacted_length
        start += size
