"""PLC on the model side: a layout applied to one grid's projected image features.

The layout (`crop_vllm.layout`) is what the processor sized the placeholders with, so the
pooled rows fill them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from crop_vllm.geometry import Grid
from crop_vllm.layout import Layout, build_layout
from crop_vllm.options import CropSettings, ImagePlan


def grid_layouts(grids: Sequence[Grid], plan: ImagePlan | None, settings: CropSettings):
    """The PLC layout of each grid (an identity layout where PLC does not apply)."""
    region = plan.plc_region if plan is not None else None
    return [build_layout(g.rows, g.cols, region, settings.plc) for g in grids]


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


def pool_features(features: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Apply a layout to one grid's features (rows*cols, D) -> (len(layout), D), in float32."""
    if features.shape[0] != layout.rows * layout.cols:
        raise ValueError(
            f"features have {features.shape[0]} rows, grid is {layout.rows}x{layout.cols}"
        )
    if layout.is_identity:
        return features
    cells, owners, weights = (t.to(features.device) for t in _pooling_indices(layout))
    pooled = torch.zeros(
        len(layout), features.shape[1], dtype=torch.float32, device=features.device
    )
    pooled.index_add_(0, owners, features.index_select(0, cells).float())
    return (pooled * weights[:, None]).to(features.dtype)


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
