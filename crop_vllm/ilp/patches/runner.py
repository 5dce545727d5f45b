"""The runner side of ILP: a patch of `GPUModelRunner._model_forward` (also `CPUModelRunner`'s).

vLLM documents `_model_forward` as the overridable model call of `execute_model`; it runs inside
the step's forward context, after `_prepare_inputs` filled the input batch (request order,
`num_computed_tokens_cpu` before the step, `query_start_loc`) and after the stock attention
metadata was built. Dummy and profiling runs call the model directly, not through it.

When the model is a CROP model with ILP on (`model.crop_ilp`), the patch computes the step's
compaction (`crop_vllm.ilp.plan.compact_step`) from each request's dropped prompt positions,
builds attention metadata for the kept tokens (compacted query_start_loc / seq_lens, slots read
from each request's block table at the compacted positions), installs it in the forward context
for the attention layers >= K, and hands the kept rows to the decoder split in
`ForwardContext.additional_kwargs`. A step that drops rows runs without CUDA graphs (graphs are
captured for full-size batches); one that keeps every row (decode) keeps them.

The kept tokens' metadata comes from metadata builders of ILP's own, one per attention group
(`IlpRunnerState`): several backends keep state in their builder (FlashInfer's planned wrappers
and paged-KV buffers, FlexAttention's persistent tensors) that the metadata they return points
to, so building twice with the stock builder would make layers < K run with the kept tokens'
metadata. Only requests that keep a token in the step enter that metadata; a step that keeps
none runs layers >= K not at all.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from vllm.config import CUDAGraphMode
from vllm.forward_context import get_forward_context
from vllm.logger import init_logger
from vllm.v1.attention.backend import CommonAttentionMetadata
from vllm.v1.kv_cache_interface import FullAttentionSpec
from vllm.v1.worker.gpu_model_runner import GPUModelRunner
from vllm.v1.worker.utils import AttentionGroup

from crop_vllm.ilp.kv import IlpAttentionSpec
from crop_vllm.ilp.plan import StepCompaction, compact_step
from crop_vllm.ilp.step import FORWARD_CONTEXT_KEY, IlpStep
from crop_vllm.vllm_surface import RUNNER_TOUCHPOINTS, check_vllm

logger = init_logger(__name__)

_PATCHED_FLAG = "_crop_ilp_patched"


def apply() -> None:
    """Patch `GPUModelRunner._model_forward` once per process (idempotent)."""
    if getattr(GPUModelRunner, _PATCHED_FLAG, False):
        return
    check_vllm(RUNNER_TOUCHPOINTS)
    stock_model_forward = GPUModelRunner._model_forward

    @functools.wraps(stock_model_forward)
    def _model_forward(self: GPUModelRunner, *args: Any, **kwargs: Any) -> Any:
        ilp = getattr(self.get_model(), "crop_ilp", None)
        if ilp is not None:
            install_step(self, ilp)
        return stock_model_forward(self, *args, **kwargs)

    GPUModelRunner._model_forward = _model_forward  # type: ignore[method-assign]
    setattr(GPUModelRunner, _PATCHED_FLAG, True)


class _Staging:
    """Pinned host buffers for the per-step arrays, copied to the device without blocking.

    A copy from a reused pinned buffer may still be in flight when the next step writes the
    buffer (async scheduling overlaps steps), so each step waits for the previous step's copies
    first (long done in practice).
    """

    def __init__(self, runner: GPUModelRunner) -> None:
        max_tokens = runner.max_num_tokens
        max_reqs = runner.max_num_reqs
        self.kept_rows = runner._make_buffer(max_tokens, dtype=torch.int64)
        self.kept_request = runner._make_buffer(max_tokens, dtype=torch.int64)
        self.compact_positions = runner._make_buffer(max_tokens, dtype=torch.int64)
        self.requests = runner._make_buffer(max_reqs, dtype=torch.int64)
        self.query_start_loc = runner._make_buffer(max_reqs + 1, dtype=torch.int32)
        self.seq_lens = runner._make_buffer(max_reqs, dtype=torch.int32)
        self._copied = torch.cuda.Event() if runner.device.type == "cuda" else None

    def stage(self, compaction: StepCompaction) -> None:
        if self._copied is not None:
            self._copied.synchronize()
        for buffer, values in (
            (self.kept_rows, compaction.kept_rows),
            (self.kept_request, compaction.kept_request),
            (self.compact_positions, compaction.kept_compact_positions),
            (self.requests, compaction.requests),
            (self.query_start_loc, compaction.query_start_loc),
            (self.seq_lens, compaction.seq_lens),
        ):
            buffer.np[: len(values)] = values
            buffer.copy_to_gpu(len(values))
        if self._copied is not None:
            self._copied.record()


def _private_group(group: AttentionGroup, runner: GPUModelRunner) -> AttentionGroup:
    """A copy of `group` with metadata builders of its own (sharing only the FlashInfer
    workspace, scratch space each kernel call uses and finishes with before the next)."""
    private = replace(group, metadata_builders=[], kernel_block_table=None)
    private.create_metadata_builders(runner.vllm_config, runner.device, group.kernel_block_size)
    stock, own = group.get_metadata_builder(), private.get_metadata_builder()
    if hasattr(stock, "set_workspace_buffer") and hasattr(stock, "_get_workspace_buffer"):
        own.set_workspace_buffer(stock._get_workspace_buffer())
    return private


class IlpRunnerState:
    """What ILP keeps per model runner: private builders, staging buffers, dropped positions."""

    def __init__(self, runner: GPUModelRunner) -> None:
        self.groups = [
            [_private_group(group, runner) for group in groups] for groups in runner.attn_groups
        ]
        self.staging = _Staging(runner)
        #: request id -> (number of mm features it was computed from, sorted drops), as the
        #: scheduler's planner keeps it (`crop_vllm.ilp.kv.IlpKvPlanner`).
        self._drops: dict[str, tuple[int, np.ndarray]] = {}

    def request_drops(self, runner: GPUModelRunner, ilp: Any) -> list[np.ndarray]:
        """Dropped prompt positions of each request in the batch, computed once per request."""
        drops = []
        for req_id in runner.input_batch.req_ids:
            request = runner.requests[req_id]
            cached = self._drops.get(req_id)
            if cached is None or cached[0] != len(request.mm_features):
                plan = ilp.request_drops(request.mm_features, request.num_prompt_tokens)
                cached = self._drops[req_id] = (len(request.mm_features), plan)
            drops.append(cached[1])
        if len(self._drops) > len(runner.requests):  # some request left the runner
            self._drops = {r: d for r, d in self._drops.items() if r in runner.requests}
        return drops

    def drops_of(self, req_id: str) -> list[int] | None:
        """The dropped positions this worker computed for a request (None: not seen yet)."""
        cached = self._drops.get(req_id)
        return None if cached is None else cached[1].tolist()


_STATES: weakref.WeakKeyDictionary[GPUModelRunner, IlpRunnerState] = weakref.WeakKeyDictionary()


def runner_state(runner: GPUModelRunner) -> IlpRunnerState:
    """ILP's state for `runner`, created on its first ILP step (attention groups exist then)."""
    state = _STATES.get(runner)
    if state is None:
        state = _STATES[runner] = IlpRunnerState(runner)
    return state


def install_step(runner: GPUModelRunner, ilp: Any) -> None:
    """Compact the step for layers >= K and put what they need in the forward context (nothing
    when no request in the batch drops a token)."""
    state = runner_state(runner)
    num_reqs = runner.input_batch.num_reqs
    query_start_loc = runner.query_start_loc.cpu[: num_reqs + 1].numpy()
    num_scheduled = np.diff(query_start_loc)
    compaction = compact_step(
        state.request_drops(runner, ilp),
        runner.input_batch.num_computed_tokens_cpu[:num_reqs],
        num_scheduled,
    )
    if compaction is None:
        return
    context = get_forward_context()
    keeps_none = compaction.num_tokens == 0
    if keeps_none:  # layers >= K get one row, without attention or KV write (see IlpStep)
        compaction = replace(compaction, kept_rows=np.zeros(1, dtype=np.int64))
        attn_metadata = slot_mapping = dict.fromkeys(ilp.pruned_layer_names)
    state.staging.stage(compaction)
    if not keeps_none:
        attn_metadata, slot_mapping = _kept_metadata(runner, state, compaction, ilp)
    context.attn_metadata = {**context.attn_metadata, **attn_metadata}  # type: ignore[dict-item]
    context.slot_mapping = {**context.slot_mapping, **slot_mapping}  # type: ignore[dict-item]
    if keeps_none or compaction.num_tokens < int(num_scheduled.sum()):
        context.cudagraph_runtime_mode = CUDAGraphMode.NONE
    context.additional_kwargs[FORWARD_CONTEXT_KEY] = IlpStep(
        kept_rows=state.staging.kept_rows.gpu[: len(compaction.kept_rows)], keeps_none=keeps_none
    )


class CompactedKvUnderAllocated(RuntimeError):
    """The scheduler gave a request fewer compacted KV blocks than its kept tokens need."""


def _check_compacted_allocation(
    runner: GPUModelRunner, compaction: StepCompaction, block_table: Any
) -> None:
    """Refuse to write KV past a request's compacted blocks (into blocks it does not own): the
    scheduler and this worker disagree on its dropped positions, a bug, so fail loudly."""
    needed = -(-compaction.seq_lens // block_table.block_size)
    owned = block_table.num_blocks_per_row[compaction.requests]
    short = np.flatnonzero(needed > owned)
    if len(short):
        req_ids = [runner.input_batch.req_ids[int(compaction.requests[i])] for i in short]
        raise CompactedKvUnderAllocated(
            f"CROP ILP: requests {req_ids} hold {owned[short].tolist()} compacted KV blocks but "
            f"their kept tokens need {needed[short].tolist()}: the scheduler's and the worker's "
            "drop plans disagree; stopping instead of writing KV into blocks they do not own"
        )


def _kept_metadata(
    runner: GPUModelRunner, state: IlpRunnerState, compaction: StepCompaction, ilp: Any
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Per attention layer >= K: backend metadata and KV slots for the kept tokens."""
    staging = state.staging
    num_reqs = runner.input_batch.num_reqs
    num_kept_reqs = len(compaction.requests)
    num_tokens = compaction.num_tokens
    kept_request = staging.kept_request.gpu[:num_tokens]
    compact_positions = staging.compact_positions.gpu[:num_tokens]
    requests = staging.requests.gpu[:num_kept_reqs]
    all_requests = num_kept_reqs == num_reqs
    computed = runner.input_batch.num_computed_tokens_cpu_tensor[:num_reqs]
    prompt = runner.input_batch.num_prompt_tokens_cpu_tensor[:num_reqs]
    is_prefilling = (computed < prompt)[torch.from_numpy(compaction.requests)]
    query_lens = np.diff(compaction.query_start_loc)
    attn_metadata: dict[str, Any] = {}
    slot_mapping: dict[str, torch.Tensor] = {}
    # As vLLM does across KV-cache groups: groups that differ only in their block tables
    # (the compacted ones) build once and update the block table when the builder can.
    built: dict[tuple[Any, type], Any] = {}
    for group_id, group in enumerate(runner.kv_cache_config.kv_cache_groups):
        spec = group.kv_cache_spec
        if not isinstance(spec, FullAttentionSpec):
            raise NotImplementedError(f"ILP supports full-attention KV caches only, got {spec}")
        layer_names = [
            [name for name in attn_group.layer_names if name in ilp.pruned_layer_names]
            for attn_group in state.groups[group_id]
        ]
        if not any(layer_names):
            continue  # layers < K only: they run with the stock metadata
        block_table = runner.input_batch.block_table[group_id]
        table = block_table.get_device_tensor(num_reqs)
        block_size = block_table.block_size
        if isinstance(spec, IlpAttentionSpec):
            _check_compacted_allocation(runner, compaction, block_table)
        slots = (
            table[kept_request, compact_positions // block_size].to(torch.int64) * block_size
            + compact_positions % block_size
        )
        common = CommonAttentionMetadata(
            query_start_loc=staging.query_start_loc.gpu[: num_kept_reqs + 1],
            query_start_loc_cpu=staging.query_start_loc.cpu[: num_kept_reqs + 1],
            seq_lens=staging.seq_lens.gpu[:num_kept_reqs],
            seq_lens_cpu_upper_bound=staging.seq_lens.cpu[:num_kept_reqs],
            num_reqs=num_kept_reqs,
            num_actual_tokens=num_tokens,
            max_query_len=int(query_lens.max()),
            max_seq_len=int(compaction.seq_lens.max()),
            block_table_tensor=table if all_requests else table[requests],
            slot_mapping=slots,
            causal=True,
            is_prefilling=is_prefilling,
            positions=compact_positions,
        )
        for attn_group, names in zip(state.groups[group_id], layer_names, strict=True):
            if not names:
                continue
            builder = attn_group.get_metadata_builder()
            key = (spec, type(builder))
            if key in built and builder.supports_update_block_table:
                kernel_table = attn_group.map_to_kernel_block_table(common.block_table_tensor)
                metadata = builder.update_block_table(built[key], kernel_table, slots)
            else:
                metadata = built[key] = attn_group.build_metadata(common)
            for layer_name in names:
                attn_metadata[layer_name] = metadata
                slot_mapping[layer_name] = slots
    return attn_metadata, slot_mapping
