"""Inner-LLM pruning (ILP), the pure part: which prompt tokens layers >= K drop, and how one
engine step's tokens compact.

Plain Python and numpy, no torch or vLLM, so that the worker, the reference implementation in
the tests and the gateway (which reports kept-token counts) share one definition.

An image's placeholder tokens are its embedding rows in order: per grid the layout's tokens in
raster order, each row followed by a separator token when the family has them (LLaVA-NeXT's
`image_newline`). ILP keeps the tokens `inside` the region, plus the separator of every row that
keeps a token (so later layers still see the row structure of the kept part); everything else is
dropped from layer K on.

For a request with sorted dropped prompt positions D, a token at position p that is kept sits at
compacted position c(p) = p - |{d in D : d < p}| in the KV cache of layers >= K, and a request
whose first n tokens are known has n - |{d in D : d < n}| of them in those layers. Since
c(p) <= p, the compacted KV of a request always lies in blocks it already owns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crop_vllm.families import language_config
from crop_vllm.geometry import Grid, grid_layout, grid_region_marks
from crop_vllm.layout import Layout, PLCSettings
from crop_vllm.options import ImagePlan


def ilp_layout(grid: Grid, plan: ImagePlan, settings: PLCSettings) -> Layout:
    """The tokens an image enters the LLM with: its PLC layout, or every cell with plain ILP."""
    assert plan.region is not None
    if plan.mode.uses_plc:
        return grid_layout(grid, plan.region, settings)
    return grid_region_marks(grid, plan.region)


def image_keep_mask(
    grids: Sequence[Grid], plan: ImagePlan | None, settings: PLCSettings
) -> list[bool]:
    """Per placeholder token of one image, whether layers >= K keep it (all True without ILP)."""
    mask: list[bool] = []
    for grid in grids:
        if plan is None or plan.region is None or not plan.mode.uses_ilp:
            layout = grid_layout(grid, plan.plc_region if plan else None, settings)
            mask += [True] * (len(layout) + (len(layout.row_ends()) if grid.row_separators else 0))
            continue
        layout = ilp_layout(grid, plan, settings)
        if not grid.row_separators:
            mask += [token.inside for token in layout.tokens]
            continue
        start = 0
        for end in layout.row_ends():
            row = [token.inside for token in layout.tokens[start : end + 1]]
            mask += [*row, any(row)]
            start = end + 1
    return mask


def dropped_positions(placements: Sequence[tuple[Sequence[int], Sequence[bool]]]) -> np.ndarray:
    """Sorted prompt positions dropped from layer K on.

    One (prompt positions of its placeholder tokens, keep mask from `image_keep_mask`) per image.
    """
    pieces = [
        np.asarray(positions, dtype=np.int64)[~np.asarray(mask, dtype=bool)]
        for positions, mask in placements
    ]
    if not pieces:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(pieces))


@dataclass(frozen=True)
class StepCompaction:
    """How one engine step's tokens shrink for layers >= K.

    Only requests that keep at least one token in the step take part in the compacted batch
    (a prefill chunk inside a dropped run keeps none): attention kernels never see an empty
    query, and a step that keeps no token at all has `num_tokens == 0`.
    """

    #: Rows of the step's flattened tokens that layers >= K process, ascending.
    kept_rows: np.ndarray
    #: Batch index of the request each kept row belongs to.
    kept_request: np.ndarray
    #: Compacted KV position c(p) of each kept row.
    kept_compact_positions: np.ndarray
    #: Batch indices of the requests with kept rows, ascending: the compacted batch.
    requests: np.ndarray
    #: Compacted query start offsets over `requests`, (len(requests) + 1,), int32.
    query_start_loc: np.ndarray
    #: Compacted sequence lengths of `requests` after this step, int32.
    seq_lens: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.kept_rows.shape[0])


def compact_step(
    drops: Sequence[np.ndarray], num_computed: np.ndarray, num_scheduled: np.ndarray
) -> StepCompaction | None:
    """The compaction of one step; None when no request in it has dropped tokens (stock step).

    `drops[i]`: sorted dropped positions of request i; request i computes positions
    [num_computed[i], num_computed[i] + num_scheduled[i]) in this step.
    """
    if all(len(d) == 0 for d in drops):
        return None
    rows, owners, positions, query_lens, seq_lens, requests = [], [], [], [], [], []
    row_start = 0
    for index, (dropped, start, count) in enumerate(
        zip(drops, num_computed.tolist(), num_scheduled.tolist(), strict=True)
    ):
        token_positions = np.arange(start, start + count, dtype=np.int64)
        before = np.searchsorted(dropped, token_positions, side="left")
        is_dropped = np.zeros(count, dtype=bool)
        if len(dropped):
            hit = np.minimum(before, len(dropped) - 1)
            is_dropped = dropped[hit] == token_positions
        kept = np.flatnonzero(~is_dropped)
        row_start += count
        if len(kept) == 0:
            continue
        rows.append(row_start - count + kept)
        owners.append(np.full(len(kept), index, dtype=np.int64))
        positions.append(token_positions[kept] - before[kept])
        query_lens.append(len(kept))
        end = start + count
        seq_lens.append(end - int(np.searchsorted(dropped, end, side="left")))
        requests.append(index)
    query_start_loc = np.zeros(len(requests) + 1, dtype=np.int32)
    np.cumsum(query_lens, out=query_start_loc[1:])
    empty = np.zeros(0, dtype=np.int64)
    return StepCompaction(
        kept_rows=np.concatenate(rows or [empty]).astype(np.int64),
        kept_request=np.concatenate(owners or [empty]),
        kept_compact_positions=np.concatenate(positions or [empty]).astype(np.int64),
        requests=np.asarray(requests, dtype=np.int64),
        query_start_loc=query_start_loc,
        seq_lens=np.asarray(seq_lens, dtype=np.int32),
    )


def kv_blocks(
    num_tokens: int, num_dropped: int, block_size: int, num_layers: int, ilp_layer: int
) -> tuple[int, int]:
    """(layer-blocks without the saving, with it) for a request holding `num_tokens` tokens of
    which `num_dropped` (all in its prompt) are dropped from layer `ilp_layer` on: a layer-block
    is one layer's KV for `block_size` tokens."""
    full = math.ceil(num_tokens / block_size)
    pruned_layers = max(num_layers - ilp_layer, 0)
    kept = math.ceil((num_tokens - num_dropped) / block_size)
    return num_layers * full, (num_layers - pruned_layers) * full + pruned_layers * kept


@dataclass(frozen=True)
class KvShape:
    """What one token stores per decoder layer, from a model's HF config: with the element
    size, it turns `kv_blocks`' layer-blocks into bytes."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, hf_config: Any) -> KvShape:
        text = language_config(hf_config)
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        return cls(text.num_hidden_layers, kv_heads, head_dim)

    def layer_block_bytes(self, block_size: int, dtype_bytes: int) -> int:
        """Bytes of one layer-block: K and V of `block_size` tokens (vLLM's page size of a
        full-attention layer)."""
        return 2 * block_size * self.num_kv_heads * self.head_dim * dtype_bytes
