"""PLC on the model side: a layout applied to one grid's projected image features.

The layout (`crop_vllm.layout`) is what the processor sized the placeholders with, so the
pooled rows fill them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from crop_vllm.geometry import Grid, grid_layout
from crop_vllm.layout import Layout
from crop_vllm.options import CropSettings, ImagePlan

#: Float32 elements that pooling accumulates at once (16 MiB). Pooling works through the feature
#: columns in blocks of this many cells x columns, so an image of 16k tokens with a wide
#: (deepstack) feature never takes a float32 copy of all its features, which vLLM's memory
#: profiling would not have seen.
POOL_BLOCK_ELEMENTS = 1 << 22


def grid_layouts(grids: Sequence[Grid], plan: ImagePlan | None, settings: CropSettings):
    """The PLC layout of each grid (an identity layout where PLC does not apply)."""
    region = plan.plc_region if plan is not None else None
    return [grid_layout(g, region, settings.plc) for g in grids]


@lru_cache(maxsize=1024)
def _pooling_indices(layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cell indices, token index of each, 1 / cells per token) for index_add pooling."""
    cells, owners, weights = [], [], []
    for token_index, token in enumerate(layout.tokens):
        cells.extend(token.cells)
        owners.extend([token_index] * len(token.cells))
        weights.append(1.0 / len(token.cells))
    return (
        torch.tensor(cells, dtype=torch.long),
        torch.tensor(owners, dtype=torch.long),
        torch.tensor(weights, dtype=torch.float32),
    )


def pool_features(
    features: torch.Tensor, layout: Layout, block_elements: int = POOL_BLOCK_ELEMENTS
) -> torch.Tensor:
    """Apply a layout to one grid's features (rows*cols, D) -> (len(layout), D).

    Each token is the mean of its cells, summed in float32 and returned in the features' dtype.
    Columns are independent, so working through them in blocks (at most `block_elements`
    float32 values at once) gives the same result as pooling all of them together.
    """
    if features.shape[0] != layout.rows * layout.cols:
        raise ValueError(
            f"features have {features.shape[0]} rows, grid is {layout.rows}x{layout.cols}"
        )
    if layout.is_identity:
        return features
    cells, owners, weights = (t.to(features.device) for t in _pooling_indices(layout))
    pooled = features.new_empty(len(layout), features.shape[1])
    step = max(1, block_elements // max(1, len(cells)))
    for start in range(0, features.shape[1], step):
        block = features[:, start : start + step]
        sums = torch.zeros(len(layout), block.shape[1], dtype=torch.float32, device=features.device)
        sums.index_add_(0, owners, block.index_select(0, cells).float())
        pooled[:, start : start + step] = (sums * weights[:, None]).to(features.dtype)
    return pooled


def insert_row_separators(
    tokens: torch.Tensor, layout: Layout, separator: torch.Tensor
) -> torch.Tensor:
    """Append `separator` after the last kept token of each row (LLaVA-NeXT newlines)."""
    ends = layout.row_ends()
    pieces, start = [], 0
    for end in ends:
        pieces += [tokens[start : end + 1], separator[None].to(tokens.dtype)]
        start = end + 1
    return torch.cat(pieces) if pieces else tokens[:0]


def apply_plan(
    features: torch.Tensor,
    grid: Grid,
    plan: ImagePlan | None,
    settings: CropSettings,
    separator: torch.Tensor | None = None,
) -> torch.Tensor:
    """PLC for one grid's features (rows*cols, D); separators added when the grid has them."""
    (layout,) = grid_layouts([grid], plan, settings)
    pooled = pool_features(features, layout)
    if not grid.row_separators:
        return pooled
    assert separator is not None, "row separators need a separator embedding"
    return insert_row_separators(pooled, layout, separator)


def apply_plan_to_grids(
    features: torch.Tensor, grids: Sequence[Grid], plan: ImagePlan | None, settings: CropSettings
) -> torch.Tensor:
    """PLC for an image whose features are its grids' cells one grid after the other."""
    sizes = [grid.rows * grid.cols for grid in grids]
    if features.shape[0] != sum(sizes):
        raise ValueError(f"features have {features.shape[0]} rows, the grids {sum(sizes)} cells")
    parts = torch.split(features, sizes)
    return torch.cat(
        [apply_plan(part, grid, plan, settings) for part, grid in zip(parts, grids, strict=True)]
    )
