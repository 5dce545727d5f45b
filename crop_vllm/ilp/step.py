"""One engine step's ILP state: what the runner hands the model through the forward context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available

#: Key of the step's `IlpStep` in `ForwardContext.additional_kwargs`.
FORWARD_CONTEXT_KEY = "crop_ilp"


@dataclass(frozen=True)
class IlpStep:
    """Layers >= K run on `kept_rows` of the step's tokens (ascending; empty: none)."""

    kept_rows: torch.Tensor


def current_step() -> IlpStep | None:
    """The running step's ILP state; None when the step prunes nothing (or in dummy runs)."""
    if not is_forward_context_available():
        return None
    return get_forward_context().additional_kwargs.get(FORWARD_CONTEXT_KEY)
