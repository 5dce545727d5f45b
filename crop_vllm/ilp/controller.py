"""What a CROP model with `crop_enable_ilp` carries as `crop_ilp`: the ILP controller."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn
from vllm.logger import init_logger
from vllm.multimodal.inputs import MultiModalFeatureSpec

from crop_vllm.ilp.backends import SUPPORTED_BACKENDS, unsupported_backends
from crop_vllm.ilp.decoder import DecoderSplit
from crop_vllm.ilp.drops import request_drops
from crop_vllm.ilp.patches import runner
from crop_vllm.options import CropSettings

logger = init_logger(__name__)


def _check_backends(layers: nn.ModuleList) -> None:
    """Refuse, while the engine loads the model, an attention backend ILP is not tested on (the
    backend is chosen per layer in the worker, so the config check cannot see it)."""
    from vllm.model_executor.layers.attention.attention import Attention

    names = {
        module.get_attn_backend().get_name()
        for module in layers.modules()
        if isinstance(module, Attention)
    }
    unsupported = unsupported_backends(names)
    if unsupported:
        raise ValueError(
            f"CROP inner-LLM pruning is not tested on the {', '.join(unsupported)} attention "
            f"backend: pick one of {', '.join(sorted(SUPPORTED_BACKENDS))} with "
            "--attention-backend, or turn ILP off (crop_enable_ilp=false)"
        )


class IlpController:
    """Splits the decoder at layer K and tells the runner which prompt positions a request drops."""

    def __init__(self, layers: nn.ModuleList, settings: CropSettings, hf_config: object) -> None:
        _check_backends(layers)
        runner.apply()
        self.layer = settings.ilp_layer
        self.settings = settings
        self.hf_config = hf_config
        self.split = DecoderSplit(layers, settings.ilp_layer)

    @classmethod
    def maybe_create(
        cls, layers: nn.ModuleList, settings: CropSettings, hf_config: object
    ) -> IlpController | None:
        """None when ILP is off on this server, or K is past the last layer (nothing to prune)."""
        if not settings.enable_ilp:
            return None
        if settings.ilp_layer >= len(layers):
            logger.info(
                "CROP ILP: crop_ilp_layer %d >= %d decoder layers, ILP keeps every token",
                settings.ilp_layer,
                len(layers),
            )
            return None
        return cls(layers, settings, hf_config)

    def request_drops(
        self, mm_features: Sequence[MultiModalFeatureSpec], num_prompt_tokens: int
    ) -> np.ndarray:
        """Sorted prompt positions that layers >= K drop for one request."""
        return request_drops(mm_features, num_prompt_tokens, self.hf_config, self.settings)
