"""ILP's KV saving: from layer K on, a request holds KV blocks for its kept tokens only.

vLLM's hybrid KV-cache allocator gives each group of layers with one spec its own manager, block
table and slot mapping over a single shared block pool. CROP marks layers < K and >= K with two
values of one spec (`IlpAttentionSpec.ilp_compacted`), so they land in different groups (vLLM
cuts the layers into groups of equal size, so that every block spans the same bytes). The
managers of the compacted groups size each request's allocation from its compacted token count
C(n) = n - |{d in D : d < n}| instead of n; `IlpKvPlanner` computes the dropped positions D in
the scheduler process with the same function the worker compacts each step with
(`crop_vllm.ilp.drops.request_drops`), and the runner writes and reads the compacted groups' own
block tables at the compacted positions. Layers < K keep ordinary blocks.

Wiring, all through vLLM's own extension points:
- the spec and its manager are registered with `KVCacheSpecRegistry` when this module is
  imported (the worker imports it to install the specs; the engine core when it unpickles them);
- the CROP config hook sets `scheduler_config.scheduler_cls` to `make_scheduler`, which builds
  vLLM's scheduler (sync or async, whichever the engine resolved) with the planner bound to the
  compacted groups' managers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from vllm.logger import init_logger
from vllm.v1.core.single_type_kv_cache_manager import (
    FullAttentionManager,
    SingleTypeKVCacheManager,
    register_all_kvcache_specs,
)
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheSpec, replace_as
from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

from crop_vllm.ilp.drops import request_drops
from crop_vllm.options import CropSettings
from crop_vllm.vllm_surface import KV_TOUCHPOINTS, check_vllm

logger = init_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class IlpAttentionSpec(FullAttentionSpec):
    """Full attention; `ilp_compacted` layers (>= K) hold only the kept tokens' KV.

    The two values never merge into one KV-cache group: `merge` raises AssertionError, the
    error vLLM's grouping catches to try the next grouping.
    """

    ilp_compacted: bool = False

    @classmethod
    def merge(cls, specs: list[Any]) -> Any:
        flags = {
            spec.ilp_compacted if isinstance(spec, IlpAttentionSpec) else None for spec in specs
        }
        if len(flags) != 1 or None in flags:
            raise AssertionError("ILP layers < K and >= K never share a KV-cache group")
        return replace(super().merge(specs), ilp_compacted=specs[0].ilp_compacted)

    def is_uniform_with_collection(self, kv_cache_specs: dict[str, KVCacheSpec]) -> bool:
        return all(
            isinstance(spec, IlpAttentionSpec) and spec.ilp_compacted == self.ilp_compacted
            for spec in kv_cache_specs.values()
        )


def ilp_spec(stock: KVCacheSpec, compacted: bool) -> KVCacheSpec:
    """A layer's spec with the ILP flag (other spec types are left alone)."""
    if type(stock) is not FullAttentionSpec:
        return stock
    return replace_as(stock, IlpAttentionSpec, ilp_compacted=compacted)


class IlpKvPlanner:
    """Dropped prompt positions of the scheduler's requests, computed once per request."""

    def __init__(self, requests: Mapping[str, Any], hf_config: object) -> None:
        self.requests = requests
        self.hf_config = hf_config
        self.settings = CropSettings.from_hf_config(hf_config)
        #: request id -> (number of mm features it was computed from, sorted drops)
        self._drops: dict[str, tuple[int, np.ndarray]] = {}

    def drops(self, request_id: str) -> np.ndarray:
        request = self.requests[request_id]
        cached = self._drops.get(request_id)
        if cached is None or cached[0] != len(request.mm_features):
            drops = request_drops(
                request.mm_features, request.num_prompt_tokens, self.hf_config, self.settings
            )
            cached = self._drops[request_id] = (len(request.mm_features), drops)
        return cached[1]

    def compacted(self, request_id: str, num_tokens: int) -> int:
        """C(n): how many of the request's first `num_tokens` tokens layers >= K keep."""
        drops = self.drops(request_id)
        if len(drops) == 0 or num_tokens > drops[-1]:
            return num_tokens - len(drops)
        return num_tokens - int(np.searchsorted(drops, num_tokens))

    def forget(self, request_id: str) -> None:
        self._drops.pop(request_id, None)


class IlpAttentionManager(FullAttentionManager):
    """Full-attention manager; bound to a planner (compacted groups), it counts C(n) tokens."""

    planner: IlpKvPlanner | None = None

    def _tokens(self, request_id: str, num_tokens: int) -> int:
        if self.planner is None:
            return num_tokens
        return self.planner.compacted(request_id, num_tokens)

    def get_num_blocks_to_allocate(self, request_id: str, num_tokens: int, *args, **kwargs) -> int:  # type: ignore[no-untyped-def]
        compacted = self._tokens(request_id, num_tokens)
        return super().get_num_blocks_to_allocate(request_id, compacted, *args, **kwargs)

    def allocate_new_blocks(self, request_id: str, num_tokens: int, num_tokens_main_model: int):  # type: ignore[no-untyped-def]
        compacted = self._tokens(request_id, num_tokens)
        return super().allocate_new_blocks(request_id, compacted, num_tokens_main_model)

    def cache_blocks(self, request: Any, num_tokens: int, *args: Any, **kwargs: Any) -> None:
        """Share (prefix-cache) only blocks that hold what the stock model would hold.

        A compacted block's contents depend on tokens after the block (the kept ones shift into
        it), while its prefix-cache hash covers the block's own tokens: only the blocks before
        the request's first dropped position are exact, so only those are cached. They are
        exactly the stock model's KV of those tokens, so any request with the same hash may
        reuse them; a request without drops caches every block as usual. Layers < K are never
        compacted and cache as usual.
        """
        if self.planner is not None:
            drops = self.planner.drops(request.request_id)
            if len(drops):
                num_tokens = min(num_tokens, int(drops[0]))
                # Also past any partial-tail caching of FullAttentionManager: the tail block
                # of an ILP request holds kept tokens from after its first drop.
                SingleTypeKVCacheManager.cache_blocks(self, request, num_tokens, *args, **kwargs)
                return
        super().cache_blocks(request, num_tokens, *args, **kwargs)


def register() -> None:
    """Register the spec and its manager (idempotent). vLLM registers its built-in specs only
    into an empty registry, so they go first."""
    from vllm.config import get_current_vllm_config_or_none

    register_all_kvcache_specs(get_current_vllm_config_or_none())
    KVCacheSpecRegistry.register(
        IlpAttentionSpec, IlpAttentionManager, uniform_type_base_spec=IlpAttentionSpec
    )


check_vllm(KV_TOUCHPOINTS)
register()


class _BindsIlpPlanner:
    """Mixed in front of vLLM's scheduler: binds one planner to the compacted groups' managers
    and forgets a request's drops when its blocks are freed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.crop_ilp_planner = IlpKvPlanner(self.requests, self.vllm_config.model_config.hf_config)
        managers = self.kv_cache_manager.coordinator.single_type_managers
        compacted = [
            manager
            for manager in managers
            if isinstance(manager, IlpAttentionManager) and manager.kv_cache_spec.ilp_compacted
        ]
        for manager in compacted:
            manager.planner = self.crop_ilp_planner
        logger.info(
            "CROP ILP: %d of %d KV-cache groups hold only the kept tokens' KV",
            len(compacted),
            len(managers),
        )

    def _free_blocks(self, request: Any) -> None:
        super()._free_blocks(request)
        self.crop_ilp_planner.forget(request.request_id)


_SCHEDULERS: dict[type, type] = {}


def make_scheduler(**kwargs: Any) -> Any:
    """vLLM's scheduler (async or not, as the engine resolved it) with the planner bound."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    base = AsyncScheduler if kwargs["vllm_config"].scheduler_config.async_scheduling else Scheduler
    if base not in _SCHEDULERS:
        _SCHEDULERS[base] = type(f"CropIlp{base.__name__}", (_BindsIlpPlanner, base), {})
    return _SCHEDULERS[base](**kwargs)
