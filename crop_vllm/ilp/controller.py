"""What a CROP model with `crop_enable_ilp` carries as `crop_ilp`: the ILP controller."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.logger import init_logger
from vllm.model_executor.layers.attention.attention import Attention
from vllm.multimodal.inputs import MultiModalFeatureSpec

from crop_vllm.ilp.decoder import DecoderSplit
from crop_vllm.ilp.drops import request_drops
from crop_vllm.ilp.patches import runner
from crop_vllm.ilp.requirements import SUPPORTED_BACKENDS, unsupported_backends
from crop_vllm.options import CropSettings

logger = init_logger(__name__)


def _check_backends(layers: nn.ModuleList) -> None:
    """Refuse, while the engine loads the model, an attention backend ILP is not tested on (the
    backend is chosen per layer in the worker, so the config check cannot see it)."""
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


def _hybrid_kv_cache_manager_on(vllm_config: VllmConfig) -> bool:
    """Whether the engine kept vLLM's hybrid KV-cache manager, which the KV saving needs. vLLM
    turns it off by itself in some configurations, after the config check ran: ILP then keeps
    full allocation (saving compute only) rather than fail."""
    if not vllm_config.scheduler_config.disable_hybrid_kv_cache_manager:
        return True
    if vllm_config.cache_config.enable_prefix_caching:
        raise ValueError(
            "CROP ILP: vLLM turned its hybrid KV-cache manager off, so layers >= K cannot hold "
            "the kept tokens' KV in blocks of their own, and prefix caching would then share "
            "compacted blocks: disable prefix caching (--no-enable-prefix-caching)"
        )
    logger.warning_once(
        "CROP ILP: vLLM turned its hybrid KV-cache manager off, so layers >= K keep a KV slot "
        "for every token (ILP saves compute, not KV memory)"
    )
    return False


def _install_kv_specs(layers: nn.ModuleList, first_pruned: int) -> None:
    """Make the attention layers of `layers` report ILP's KV spec: compacted from K on."""
    from crop_vllm.ilp.kv import ilp_spec

    for index, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(module, Attention):
                stock = module.get_kv_cache_spec

                def spec(vllm_config, stock=stock, compacted=index >= first_pruned):  # type: ignore[no-untyped-def]
                    return ilp_spec(stock(vllm_config), compacted)

                module.get_kv_cache_spec = spec


class IlpController:
    """Splits the decoder at layer K and tells the runner which prompt positions a request drops."""

    def __init__(self, layers: nn.ModuleList, settings: CropSettings, hf_config: object) -> None:
        _check_backends(layers)
        runner.apply()
        vllm_config = get_current_vllm_config()
        self.layer = settings.ilp_layer
        self.settings = settings
        self.hf_config = hf_config
        self.split = DecoderSplit(layers, settings.ilp_layer)
        #: Names of the attention layers that see only the kept tokens (layers >= K).
        self.pruned_layer_names = frozenset(
            module.layer_name
            for layer in layers[settings.ilp_layer :]
            for module in layer.modules()
            if isinstance(module, Attention)
        )
        self.compact_kv = settings.ilp_compact_kv and _hybrid_kv_cache_manager_on(vllm_config)
        if self.compact_kv:
            _install_kv_specs(layers, settings.ilp_layer)

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
