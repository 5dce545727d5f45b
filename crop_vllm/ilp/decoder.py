"""The decoder split: layers >= K of a vLLM text model run on the kept tokens only.

vLLM's Llama and Qwen2 models call each decoder layer as `layer(positions, hidden_states,
residual)` (Qwen's positions are (3, N) M-RoPE). Instead of copying their loops, hooks cut the
loop, each step, through the custom ops of `crop_vllm.ilp.ops` (so a compiled model, traced once,
still cuts at run time):

- before layer K: `crop::ilp_enter` takes the kept rows of positions (original positions, so
  RoPE is unchanged), hidden states and residual; before each later layer the kept positions are
  passed again (the model's loop hands every layer its full `positions`, while hidden states and
  residual arrive compacted from the layer before);
- after the last layer: `crop::ilp_leave` scatters the kept rows back into full-size tensors, so
  that the final norm, the sampler's `logits_indices` and everything the runner does afterwards
  see one row per scheduled token.

The attention metadata layers >= K read for the kept tokens is installed by the runner before
the model runs (see `IlpStep` for a step that keeps no token). Steps without ILP go through with
every row.
"""

from __future__ import annotations

import torch
from torch import nn

import crop_vllm.ilp.ops  # noqa: F401  (registers torch.ops.crop)


class DecoderSplit:
    """Installs the hooks on `layers[first_pruned:]` (pre) and `layers[-1]` (post)."""

    def __init__(self, layers: nn.ModuleList, first_pruned: int) -> None:
        if not 0 <= first_pruned < len(layers):
            raise ValueError(f"ILP layer {first_pruned} outside 0..{len(layers) - 1}")
        self.first_pruned = first_pruned
        # Tensors of the step between the hooks (also while the compiler traces them).
        self._before_cut: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._kept_positions: torch.Tensor | None = None
        layers[first_pruned].register_forward_pre_hook(self._enter)
        for layer in layers[first_pruned + 1 :]:
            layer.register_forward_pre_hook(self._continue)
        layers[len(layers) - 1].register_forward_hook(self._leave)

    def _enter(self, module: nn.Module, args: tuple) -> tuple:
        positions, hidden_states, residual = args
        self._before_cut = (hidden_states, residual)
        kept = torch.ops.crop.ilp_enter(positions, hidden_states, residual)
        self._kept_positions = kept[0]
        return kept

    def _continue(self, module: nn.Module, args: tuple) -> tuple:
        _, hidden_states, residual = args
        return (self._kept_positions, hidden_states, residual)

    def _leave(self, module: nn.Module, args: tuple, output: tuple) -> tuple:
        assert self._before_cut is not None, "the last decoder layer ran without layer K"
        hidden_states, residual = self._before_cut
        self._before_cut = self._kept_positions = None
        return torch.ops.crop.ilp_leave(hidden_states, residual, *output)
