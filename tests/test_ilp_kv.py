"""ILP's KV saving in vLLM's allocator, without an engine: grouping, block counts, freeing.

Real vLLM grouping (`get_kv_cache_groups`), pool sizing and `KVCacheManager`; only the dropped
positions are given directly (`FixedDrops`), as the scheduler would compute them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vllm.config import VllmConfig
from vllm.sampling_params import SamplingParams
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups, get_kv_cache_groups
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry
from vllm.v1.request import Request

from crop_vllm.ilp.kv import IlpAttentionManager, IlpKvPlanner, ilp_spec
from crop_vllm.ilp.plan import kv_blocks

BLOCK = 32


def layer_specs(num_layers: int, ilp_layer: int, heads: int = 4, head_dim: int = 32):
    stock = FullAttentionSpec(
        block_size=BLOCK, num_kv_heads=heads, head_size=head_dim, dtype=torch.float16
    )
    return {
        f"model.layers.{i}.self_attn.attn": ilp_spec(stock, i >= ilp_layer)
        for i in range(num_layers)
    }


@pytest.fixture(scope="module")
def vllm_config():
    config = VllmConfig()
    config.cache_config.kv_cache_layout = "NHD"
    return config


@pytest.mark.parametrize(
    ("num_layers", "ilp_layer", "groups"),
    [
        (4, 2, 2),  # the tiny test LLMs
        (12, 2, 6),  # the `bench` LLM
        (32, 2, 16),  # LLaVA-1.5-7B
        (28, 2, 14),  # Qwen2.5-VL-7B
        (4, 0, 1),  # K = 0: every layer compacted
    ],
)
def test_layers_below_and_from_k_never_share_a_group(vllm_config, num_layers, ilp_layer, groups):
    found = get_kv_cache_groups(vllm_config, layer_specs(num_layers, ilp_layer))
    assert len(found) == groups
    for group in found:
        indices = {int(name.split(".")[2]) for name in group.layer_names}
        compacted = group.kv_cache_spec.ilp_compacted
        assert all((i >= ilp_layer) == compacted for i in indices), group.layer_names
    assert sum(len(g.layer_names) for g in found) == num_layers


def test_every_group_block_spans_the_same_bytes(vllm_config):
    groups = get_kv_cache_groups(vllm_config, layer_specs(32, 2))
    config = get_kv_cache_config_from_groups(vllm_config, groups, 64 * 2**20)
    assert len({tensor.size for tensor in config.kv_cache_tensors}) == 1
    assert len({len(group.layer_names) for group in groups}) == 1


def test_the_registry_keeps_vllms_own_managers():
    from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager

    stock = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=8, dtype=torch.float16)
    assert KVCacheSpecRegistry.get_manager_class(stock) is FullAttentionManager
    assert KVCacheSpecRegistry.get_manager_class(ilp_spec(stock, True)) is IlpAttentionManager


class FixedDrops(IlpKvPlanner):
    """The planner with its dropped positions given instead of read from images."""

    def __init__(self, drops: dict[str, np.ndarray]) -> None:
        self.fixed = drops
        self.forgotten: list[str] = []

    def drops(self, request_id: str) -> np.ndarray:
        return self.fixed.get(request_id, np.zeros(0, np.int64))

    def forget(self, request_id: str) -> None:
        self.forgotten.append(request_id)


def make_manager(vllm_config, drops: dict[str, np.ndarray], num_blocks: int) -> KVCacheManager:
    groups = get_kv_cache_groups(vllm_config, layer_specs(4, 2))
    page = groups[0].kv_cache_spec.page_size_bytes * len(groups[0].layer_names)
    config = get_kv_cache_config_from_groups(vllm_config, groups, page * num_blocks)
    manager = KVCacheManager(
        config, max_model_len=1024, scheduler_block_size=BLOCK, hash_block_size=BLOCK,
        enable_caching=False,
    )  # fmt: skip
    planner = FixedDrops(drops)
    for single in manager.coordinator.single_type_managers:
        if single.kv_cache_spec.ilp_compacted:
            single.planner = planner
    return manager


def make_request(request_id: str, prompt_len: int) -> Request:
    return Request(
        request_id, list(range(prompt_len)), SamplingParams(max_tokens=64), pooling_params=None
    )


#: A 300-token prompt whose image (positions 20..275) keeps one 64-token quarter.
IMAGE = np.setdiff1d(np.arange(20, 276), np.arange(20, 84))


def compacted(n: int, drops: np.ndarray) -> int:
    return n - int(np.sum(drops < n))


def test_chunks_and_decode_steps_allocate_full_and_compacted_counts(vllm_config):
    manager = make_manager(vllm_config, {"ilp": IMAGE}, num_blocks=64)
    request = make_request("ilp", 300)
    computed = 0
    for chunk in [64] * 4 + [44] + [1] * 40:  # prefill in 64-token chunks, then 40 decode steps
        assert manager.allocate_slots(request, chunk) is not None
        computed += chunk
        request.num_computed_tokens = computed
        below, from_k = manager.get_block_ids("ilp")
        assert len(below) == math.ceil(computed / BLOCK)
        assert len(from_k) == math.ceil(compacted(computed, IMAGE) / BLOCK)


def test_a_request_without_ilp_gets_the_same_blocks_in_every_group(vllm_config):
    manager = make_manager(vllm_config, {}, num_blocks=64)
    request = make_request("plain", 300)
    manager.allocate_slots(request, 300)
    below, from_k = manager.get_block_ids("plain")
    assert len(below) == len(from_k) == math.ceil(300 / BLOCK)


def test_freeing_returns_every_block(vllm_config):
    manager = make_manager(vllm_config, {"ilp": IMAGE}, num_blocks=64)
    free_before = manager.block_pool.get_num_free_blocks()
    request = make_request("ilp", 300)
    manager.allocate_slots(request, 300)
    assert manager.block_pool.get_num_free_blocks() < free_before
    manager.free(request)
    assert manager.block_pool.get_num_free_blocks() == free_before


def test_equal_bytes_admit_more_pruned_prompts(vllm_config):
    """Stock: one 4-layer block per 32 tokens; ILP: two 2-layer blocks (same bytes in all)."""
    stock_blocks, ilp_blocks = 40, 80
    stock_fit = (stock_blocks - 1) // math.ceil(300 / BLOCK)
    per_ilp = math.ceil(300 / BLOCK) + math.ceil(compacted(300, IMAGE) / BLOCK)
    ilp_fit = (ilp_blocks - 1) // per_ilp
    drops = {f"r{i}": IMAGE for i in range(20)}
    manager = make_manager(vllm_config, drops, num_blocks=ilp_blocks)
    admitted = 0
    for i in range(20):
        if manager.allocate_slots(make_request(f"r{i}", 300), 300, full_sequence_must_fit=True):
            admitted += 1
    assert admitted == ilp_fit > stock_fit


def test_the_block_formula_matches_the_allocator(vllm_config):
    manager = make_manager(vllm_config, {"ilp": IMAGE}, num_blocks=64)
    request = make_request("ilp", 300)
    manager.allocate_slots(request, 300)
    below, from_k = manager.get_block_ids("ilp")
    full, saved = kv_blocks(300, len(IMAGE), BLOCK, num_layers=4, ilp_layer=2)
    assert (full, saved) == (4 * len(below), 2 * len(below) + 2 * len(from_k))


def test_the_planner_counts_kept_tokens():
    planner = FixedDrops({"r": np.array([2, 3, 5])})
    assert [planner.compacted("r", n) for n in range(8)] == [0, 1, 2, 2, 2, 3, 3, 4]
