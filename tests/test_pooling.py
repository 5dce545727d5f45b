"""Pooling a layout over image features: the mean of each token's cells, in bounded memory."""

import pytest
import torch

from crop_vllm.layout import PLCSettings, Region, build_layout
from crop_vllm.models.pooling import pool_features

LAYOUT = build_layout(12, 16, Region(0.3, 0.2, 0.6, 0.7), PLCSettings(outside_stride=4))


def features(dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(12 * 16, 96, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_blocks_of_columns_give_the_same_tokens_as_one_block(dtype):
    x = features(dtype)
    whole = pool_features(x, LAYOUT, block_elements=1 << 30)
    for block_elements in (1, 7 * len(x), 50 * len(x)):
        assert torch.equal(pool_features(x, LAYOUT, block_elements=block_elements), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_token_is_the_mean_of_its_cells_in_the_features_dtype(dtype):
    x = features(dtype)
    pooled = pool_features(x, LAYOUT, block_elements=3 * len(x))
    expected = torch.stack([x[list(t.cells)].double().mean(0) for t in LAYOUT.tokens])
    assert pooled.dtype == dtype
    assert torch.allclose(pooled.double(), expected, atol=1e-6 if dtype == torch.float32 else 1e-2)


def test_an_identity_layout_returns_the_features_themselves():
    x = features(torch.float32)
    assert pool_features(x, build_layout(12, 16, None)) is x


def test_features_of_another_grid_are_refused():
    with pytest.raises(ValueError, match="12x16"):
        pool_features(torch.zeros(10, 4), LAYOUT)
