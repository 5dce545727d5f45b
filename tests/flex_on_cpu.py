"""Worker extension that runs vLLM's FLEX_ATTENTION backend on the CPU wheel (tests only).

ILP's metadata must also be right on backends whose builders keep state; FlexAttention's does
(persistent tensors the metadata points to) and, unlike the CUDA backends, runs on a CPU with
three adaptations of vLLM 0.32 applied in the worker process when vLLM imports this module:

- the CPU platform honours `attention_backend="FLEX_ATTENTION"` (it always picks CPU_ATTN);
- the KV-cache write is a torch scatter (the CPU wheel has no `reshape_and_cache_flash` op);
- flex attention runs eagerly (no inductor C++ compile on a 2-core machine); eager flex
  materializes query x cached keys, so engines keep their KV cache small.

Use `LLM(attention_backend="FLEX_ATTENTION", worker_extension_cls="tests.flex_on_cpu.FlexOnCpu")`.
The ILP probe (`tests.ilp_probe`) is installed too.
"""

from __future__ import annotations

import torch
from torch.nn.attention.flex_attention import flex_attention
from vllm.platforms.cpu import CpuPlatform
from vllm.v1.attention.backends import flex_attention as flex_backend
from vllm.v1.attention.backends.registry import AttentionBackendEnum

from tests.ilp_probe import IlpProbe

_stock_backend_cls = CpuPlatform.get_attn_backend_cls.__func__


def _backend_cls(cls, selected_backend, attn_selector_config, num_heads=None):  # type: ignore[no-untyped-def]
    if selected_backend == AttentionBackendEnum.FLEX_ATTENTION and not attn_selector_config.use_mla:
        return AttentionBackendEnum.FLEX_ATTENTION.get_path()
    return _stock_backend_cls(cls, selected_backend, attn_selector_config, num_heads)


def _write_kv_cache(self, layer, key, value, kv_cache, slot_mapping):  # type: ignore[no-untyped-def]
    key_cache, value_cache = kv_cache.transpose(1, 2).split(self.head_size, dim=-1)
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    block_size = key_cache.shape[1]
    count = slot_mapping.shape[0]
    key_cache[slots // block_size, slots % block_size] = key[:count][valid].to(key_cache.dtype)
    value_cache[slots // block_size, slots % block_size] = value[:count][valid].to(
        value_cache.dtype
    )


CpuPlatform.get_attn_backend_cls = classmethod(_backend_cls)
flex_backend.FlexAttentionImpl.do_kv_cache_update = _write_kv_cache
flex_backend.flex_attention_compiled = flex_attention
torch._dynamo.config.suppress_errors = False


class FlexOnCpu(IlpProbe):
    """The worker extension (FLEX on CPU, plus the stock-metadata invariant report)."""
