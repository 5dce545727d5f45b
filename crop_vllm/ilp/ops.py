"""The decoder cut as two custom ops, so that a compiled model prunes at run time.

vLLM compiles the text model by tracing it once (torch.compile; CPU: one inductor graph; CUDA:
piecewise graphs split at attention). Python that looked at the step while being traced would be
frozen into the graph as it was during the dummy run, with no ILP step: ILP would silently do
nothing. These ops are opaque to the tracer; they read the running step's kept rows each time
they run, and their output size is dynamic (an unbacked size for the compiler):

- `crop::ilp_enter(positions, hidden_states, residual)`: the kept rows of the three, before
  layer K (all rows, copied, when the step prunes nothing);
- `crop::ilp_leave(hidden_states, residual, kept_hidden_states, kept_residual)`: full-size
  tensors again after the last layer, the kept rows written back over the layer K-1 values of
  the others (none written back when the step keeps no token).

They only move rows; the kept tokens' attention metadata is installed for layers >= K by the
runner before the model runs (`crop_vllm.ilp.patches.runner`). Piecewise CUDA graphs captured
around them (with no ILP step: all rows) stay valid for ILP steps that keep every row (decode);
steps that drop rows run without graphs.
"""

from __future__ import annotations

import torch

from crop_vllm.ilp.step import current_step


def _kept_rows() -> torch.Tensor | None:
    step = current_step()
    return None if step is None else step.kept_rows


def _keeps_none() -> bool:
    step = current_step()
    return step is not None and step.keeps_none


@torch.library.custom_op("crop::ilp_enter", mutates_args=())
def ilp_enter(
    positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept rows of positions (last dim), hidden states and residual (zeros when None: K = 0)."""
    if residual is None:
        residual = torch.zeros_like(hidden_states)
    rows = _kept_rows()
    if rows is None:
        return positions.clone(), hidden_states.clone(), residual.clone()
    return positions[..., rows], hidden_states[rows], residual[rows]


@ilp_enter.register_fake
def _ilp_enter_fake(
    positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # At least one row: a step that keeps no token runs one placeholder row (IlpStep.keeps_none).
    # Graphs that need a non-empty batch (Qwen3's attention, MoE layers) compile on this bound.
    kept = torch.library.get_ctx().new_dynamic_size(min=1)
    return (
        positions.new_empty((*positions.shape[:-1], kept)),
        hidden_states.new_empty((kept, hidden_states.shape[1])),
        hidden_states.new_empty((kept, hidden_states.shape[1])),
    )


@torch.library.custom_op("crop::ilp_leave", mutates_args=())
def ilp_leave(
    hidden_states: torch.Tensor,
    residual: torch.Tensor | None,
    kept_hidden_states: torch.Tensor,
    kept_residual: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size hidden states and residual with the kept rows written back (a dropped row keeps
    its layer K-1 values: image placeholders are never sampled). With K = 0 there is no residual
    before the cut: dropped rows then carry their embeddings."""
    if residual is None:
        residual = hidden_states
    if _keeps_none():
        return hidden_states.clone(), residual.clone()
    rows = _kept_rows()
    if rows is None:
        return kept_hidden_states.clone(), kept_residual.clone()
    return (
        hidden_states.index_copy(0, rows, kept_hidden_states),
        residual.index_copy(0, rows, kept_residual),
    )


@ilp_leave.register_fake
def _ilp_leave_fake(
    hidden_states: torch.Tensor,
    residual: torch.Tensor | None,
    kept_hidden_states: torch.Tensor,
    kept_residual: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(hidden_states), torch.empty_like(hidden_states)
