"""One engine step's ILP state: what the runner hands the model through the forward context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available

#: Key of the step's `IlpStep` in `ForwardContext.additional_kwargs`.
FORWARD_CONTEXT_KEY = "crop_ilp"


@dataclass(frozen=True)
class IlpStep:
    """Layers >= K run on `kept_rows` of the step's tokens (ascending).

    A step that keeps no token (a prefill chunk inside a dropped run) still hands layers >= K
    one row, with no attention and no KV write (`keeps_none`), and every row keeps its layer K-1
    values: no kernel ever runs on an empty batch, compiled or not.
    """

    kept_rows: torch.Tensor
    keeps_none: bool = False


def current_step() -> IlpStep | None:
    """The running step's ILP state; None when the step prunes nothing (or in dummy runs)."""
    if not is_forward_context_available():
        return None
    return get_forward_context().additional_kwargs.get(FORWARD_CONTEXT_KEY)
