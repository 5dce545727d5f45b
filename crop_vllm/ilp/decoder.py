"""The decoder split: layers >= K of a vLLM text model run on the kept tokens only.

vLLM's Llama and Qwen2 models call each decoder layer as `layer(positions, hidden_states,
residual)` (Qwen's positions are (3, N) M-RoPE). Instead of copying their loops, two hooks cut
the loop when a step carries an `IlpStep`:

- before layer K: gather the kept rows of positions (original positions, so RoPE is unchanged),
  hidden states and residual, and point the forward context at the attention metadata and slot
  mapping that the runner rebuilt for the kept tokens; before each later layer, swap in the
  gathered positions again (the model's loop passes its full `positions` to every layer, while
  hidden states and residual arrive compacted from the layer before);
- after the last layer: restore the forward context and scatter the kept rows back into
  full-size tensors, so that the final norm, the sampler's `logits_indices` and everything the
  runner does afterwards see one row per scheduled token. Rows of dropped tokens keep their
  layer K-1 values: they are image placeholders, never sampled (a chunk whose last token is one
  is a partial prefill whose sample vLLM discards).

A step that keeps no token at all (a prefill chunk inside a dropped run) skips layers >= K: their
`forward` passes its inputs through, so no kernel ever runs on an empty batch.

Steps without an `IlpStep` (no ILP request in the batch, profiling and dummy runs) go through
untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from vllm.forward_context import get_forward_context

from crop_vllm.ilp.step import IlpStep, current_step


@dataclass
class _Entered:
    """What the split saved on entering layer K, to undo on leaving the last layer."""

    step: IlpStep
    positions: torch.Tensor | None
    attn_metadata: object
    slot_mapping: object
    hidden_states: torch.Tensor
    residual: torch.Tensor | None


class DecoderSplit:
    """Installs the hooks on `layers[first_pruned:]` (pre) and `layers[-1]` (post)."""

    def __init__(self, layers: nn.ModuleList, first_pruned: int) -> None:
        if not 0 <= first_pruned < len(layers):
            raise ValueError(f"ILP layer {first_pruned} outside 0..{len(layers) - 1}")
        self.first_pruned = first_pruned
        self._entered: _Entered | None = None
        layers[first_pruned].register_forward_pre_hook(self._enter)
        for layer in layers[first_pruned + 1 :]:
            layer.register_forward_pre_hook(self._continue)
        for layer in layers[first_pruned:]:
            layer.forward = self._skippable(layer.forward)
        layers[len(layers) - 1].register_forward_hook(self._leave)

    def _skippable(self, forward: Callable[..., tuple]) -> Callable[..., tuple]:
        def run_or_skip(positions, hidden_states, residual, *args, **kwargs):  # type: ignore[no-untyped-def]
            entered = self._entered
            if entered is None or entered.step.kept_rows is not None:
                return forward(positions, hidden_states, residual, *args, **kwargs)
            if residual is None:  # K = 0: the final norm then sees the embeddings
                residual = torch.zeros_like(hidden_states)
            return hidden_states, residual

        return run_or_skip

    def _enter(self, module: nn.Module, args: tuple) -> tuple | None:
        step = current_step()
        if step is None:
            return None
        positions, hidden_states, residual = args
        context = get_forward_context()
        if step.kept_rows is None:
            self._entered = _Entered(
                step, None, context.attn_metadata, context.slot_mapping, hidden_states, residual
            )
            return None
        rows = step.kept_rows
        self._entered = _Entered(
            step,
            positions[..., rows],
            context.attn_metadata,
            context.slot_mapping,
            hidden_states,
            residual,
        )
        assert isinstance(context.attn_metadata, dict), "ILP does not support micro-batching"
        context.attn_metadata = {**context.attn_metadata, **step.attn_metadata}
        context.slot_mapping = {**context.slot_mapping, **step.slot_mapping}  # type: ignore[dict-item]
        return (
            self._entered.positions,
            hidden_states[rows],
            None if residual is None else residual[rows],
        )

    def _continue(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._entered is None or self._entered.positions is None:
            return None
        _, hidden_states, residual = args
        return (self._entered.positions, hidden_states, residual)

    def _leave(self, module: nn.Module, args: tuple, output: tuple) -> tuple | None:
        entered, self._entered = self._entered, None
        if entered is None:
            return None
        context = get_forward_context()
        context.attn_metadata = entered.attn_metadata
        context.slot_mapping = entered.slot_mapping  # type: ignore[assignment]
        rows = entered.step.kept_rows
        if rows is None:
            return None
        hidden_states, residual = output
        # With K = 0 there is no residual yet: dropped rows then carry their embeddings.
        residual_before = entered.hidden_states if entered.residual is None else entered.residual
        return (
            entered.hidden_states.index_copy(0, rows, hidden_states),
            residual_before.index_copy(0, rows, residual),
        )
