"""The runner side of ILP: a patch of `GPUModelRunner._model_forward` (also `CPUModelRunner`'s).

vLLM documents `_model_forward` as the overridable model call of `execute_model`; it runs inside
the step's forward context, after `_prepare_inputs` filled the input batch (request order,
`num_computed_tokens_cpu` before the step, `query_start_loc`) and after the stock attention
metadata was built. Dummy and profiling runs call the model directly, not through it.

When the model is a CROP model with ILP on (`model.crop_ilp`), the patch computes the step's
compaction (`crop_vllm.ilp.plan.compact_step`) from each request's dropped prompt positions,
rebuilds attention metadata for the kept tokens through each attention group's own metadata
builder (compacted query_start_loc / seq_lens, slots read from the request's block table at the
compacted positions), and hands both to the model in `ForwardContext.additional_kwargs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from crop_vllm.ilp.plan import StepCompaction, compact_step
from crop_vllm.ilp.step import FORWARD_CONTEXT_KEY, IlpStep

logger = init_logger(__name__)

_PATCHED_FLAG = "_crop_ilp_patched"


def apply() -> None:
    """Patch `GPUModelRunner._model_forward` once per process (idempotent)."""
    if getattr(GPUModelRunner, _PATCHED_FLAG, False):
        return
    stock_model_forward = GPUModelRunner._model_forward

    def _model_forward(self: GPUModelRunner, *args: Any, **kwargs: Any) -> Any:
        ilp = getattr(self.get_model(), "crop_ilp", None)
        if ilp is not None:
            step = build_step(self, ilp)
            if step is not None:
                get_forward_context().additional_kwargs[FORWARD_CONTEXT_KEY] = step
        return stock_model_forward(self, *args, **kwargs)

    GPUModelRunner._model_forward = _model_forward  # type: ignore[method-assign]
    setattr(GPUModelRunner, _PATCHED_FLAG, True)


def _request_drops(runner: GPUModelRunner, ilp: Any) -> list[np.ndarray]:
    """Dropped prompt positions of each request in the batch, computed once per request."""
    cache: dict[str, np.ndarray] = runner.__dict__.setdefault("_crop_ilp_drops", {})
    drops = []
    for req_id in runner.input_batch.req_ids:
        if req_id not in cache:
            cache[req_id] = ilp.request_drops(runner.requests[req_id].mm_features)
        drops.append(cache[req_id])
    if len(cache) > 2 * len(runner.requests) + 16:
        for gone in [req_id for req_id in cache if req_id not in runner.requests]:
            del cache[gone]
    return drops


def build_step(runner: GPUModelRunner, ilp: Any) -> IlpStep | None:
    """The step's `IlpStep`, or None when no request in the batch drops a token."""
    num_reqs = runner.input_batch.num_reqs
    query_start_loc = runner.query_start_loc.cpu[: num_reqs + 1].numpy()
    compaction = compact_step(
        _request_drops(runner, ilp),
        runner.input_batch.num_computed_tokens_cpu[:num_reqs],
        np.diff(query_start_loc),
    )
    if compaction is None:
        return None
    attn_metadata, slot_mapping = _rebuild_metadata(runner, compaction)
    return IlpStep(
        kept_rows=torch.from_numpy(compaction.kept_rows).to(runner.device),
        attn_metadata=attn_metadata,
        slot_mapping=slot_mapping,
    )


def _rebuild_metadata(
    runner: GPUModelRunner, compaction: StepCompaction
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Per attention layer: backend metadata and KV slots for the kept tokens."""
    device = runner.device
    num_reqs = runner.input_batch.num_reqs
    query_start_loc_cpu = torch.from_numpy(compaction.query_start_loc)
    seq_lens_cpu = torch.from_numpy(compaction.seq_lens)
    query_lens = np.diff(compaction.query_start_loc)
    kept_request = torch.from_numpy(compaction.kept_request).to(device)
    compact_positions = torch.from_numpy(compaction.kept_compact_positions).to(device)
    num_computed = runner.input_batch.num_computed_tokens_cpu_tensor[:num_reqs]
    num_prompt = runner.input_batch.num_prompt_tokens_cpu_tensor[:num_reqs]
    attn_metadata: dict[str, Any] = {}
    slot_mapping: dict[str, torch.Tensor] = {}
    for group_id, group in enumerate(runner.kv_cache_config.kv_cache_groups):
        if not isinstance(group.kv_cache_spec, FullAttentionSpec):
            raise NotImplementedError(
                f"ILP supports full-attention KV caches only, got {group.kv_cache_spec}"
            )
        block_table = runner.input_batch.block_table[group_id]
        table = block_table.get_device_tensor(num_reqs)
        block_size = block_table.block_size
        slots = (
            table[kept_request, compact_positions // block_size].to(torch.int64) * block_size
            + compact_positions % block_size
        )
        common = CommonAttentionMetadata(
            query_start_loc=query_start_loc_cpu.to(device),
            query_start_loc_cpu=query_start_loc_cpu,
            seq_lens=seq_lens_cpu.to(device),
            seq_lens_cpu_upper_bound=seq_lens_cpu,
            num_reqs=num_reqs,
            num_actual_tokens=compaction.num_tokens,
            max_query_len=int(query_lens.max()),
            max_seq_len=int(compaction.seq_lens.max()),
            block_table_tensor=table,
            slot_mapping=slots,
            causal=True,
            is_prefilling=num_computed < num_prompt,
            positions=compact_positions,
        )
        for attn_group in runner.attn_groups[group_id]:
            metadata = attn_group.build_metadata(common)
            for layer_name in attn_group.layer_names:
                attn_metadata[layer_name] = metadata
                slot_mapping[layer_name] = slots
    return attn_metadata, slot_mapping
