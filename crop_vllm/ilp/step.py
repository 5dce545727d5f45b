"""One engine step's ILP state: what the runner hands the model through the forward context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from vllm.forward_context import get_forward_context, is_forward_context_available

#: Key of the step's `IlpStep` in `ForwardContext.additional_kwargs`.
FORWARD_CONTEXT_KEY = "crop_ilp"


@dataclass(frozen=True)
class IlpStep:
    """Layers >= K run on `kept_rows` of the step's tokens, with this metadata and these slots;
    `kept_rows` None: the step keeps no token, layers >= K do not run."""

    kept_rows: torch.Tensor | None
    #: Attention layer name -> backend metadata built for the kept tokens.
    attn_metadata: dict[str, Any]
    #: Attention layer name -> KV slot of each kept token (compacted positions).
    slot_mapping: dict[str, torch.Tensor]


def current_step() -> IlpStep | None:
    """The running step's ILP state; None when the step prunes nothing (or in dummy runs)."""
    if not is_forward_context_available():
        return None
    return get_forward_context().additional_kwargs.get(FORWARD_CONTEXT_KEY)
