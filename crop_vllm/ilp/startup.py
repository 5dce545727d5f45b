"""Refuse, at engine startup, the engine settings CROP cannot run correctly under.

Registered in vLLM's `MODELS_CONFIG_MAP` for the CROP architectures: `VllmConfig.__post_init__`
calls `verify_and_update_config` while the config is built, in the process that builds it (the
`LLM` constructor or `vllm serve`), so the error reaches the user before any worker starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vllm.config import CUDAGraphMode
from vllm.model_executor.models.config import VerifyAndUpdateConfig

from crop_vllm.ilp.requirements import COMPACT_KV_SCHEDULER, SUPPORTED_BACKENDS
from crop_vllm.options import CropSettings

if TYPE_CHECKING:
    from vllm.config import VllmConfig


def plc_problems(vllm_config: VllmConfig) -> list[str]:
    """What to change so that PLC (every CROP model) runs correctly (empty: fine)."""
    problems = []
    if vllm_config.compilation_config.cudagraph_mm_encoder:
        problems.append(
            "encoder CUDA graphs replay the vision encoder without the model's "
            "embed_multimodal, where PLC pools the image features, while the prompt is already "
            "sized for the pooled tokens: remove cudagraph_mm_encoder from --compilation-config"
        )
    multimodal = vllm_config.model_config.multimodal_config
    if multimodal is not None and multimodal.is_multimodal_pruning_enabled():
        problems.append(
            "video token pruning (--video-pruning-rate) appends position channels to the "
            "embeddings that CROP pools: remove it on a CROP engine"
        )
    return problems


def ilp_problems(vllm_config: VllmConfig, settings: CropSettings) -> list[str]:
    """What to change so that ILP can run (empty: fine)."""
    problems = []
    if vllm_config.cache_config.enable_prefix_caching and not settings.ilp_compact_kv:
        problems.append(
            "prefix caching would share KV blocks whose layers >= K hold compacted contents: "
            "keep the KV saving on (crop_ilp_compact_kv=true), which caches only what is safe "
            "to share, or disable prefix caching (--no-enable-prefix-caching)"
        )
    cudagraph_mode = vllm_config.compilation_config.cudagraph_mode
    if cudagraph_mode is not None and cudagraph_mode.has_full_cudagraphs():
        problems.append(
            f"cudagraph_mode {cudagraph_mode.name} captures whole steps with one attention "
            "metadata for every layer, while layers >= K attend over the kept tokens only: use "
            'PIECEWISE (--compilation-config \'{"cudagraph_mode": "PIECEWISE"}\'), or leave it '
            "unset (CROP then picks PIECEWISE)"
        )
    if vllm_config.speculative_config is not None:
        problems.append("speculative decoding is not supported with ILP: remove it")
    parallel = vllm_config.parallel_config
    if parallel.pipeline_parallel_size > 1:
        problems.append("pipeline parallelism is not supported with ILP: use 1 stage")
    if parallel.decode_context_parallel_size > 1:
        problems.append("decode context parallelism is not supported with ILP")
    if getattr(parallel, "enable_dbo", False):
        problems.append("dual-batch overlap (micro-batching) is not supported with ILP")
    from vllm.platforms import current_platform

    if current_platform.is_cuda_alike() and vllm_config.use_v2_model_runner:
        problems.append(
            "ILP hooks the V1 model runner: set VLLM_USE_V2_MODEL_RUNNER=0 in the environment"
        )
    if vllm_config.cache_config.kv_sharing_fast_prefill:
        problems.append("--kv-sharing-fast-prefill is not supported with ILP")
    if vllm_config.lora_config is not None:
        problems.append(
            "LoRA maps adapters per scheduled token while layers >= K see only the kept "
            "tokens: remove --enable-lora"
        )
    if (
        vllm_config.kv_transfer_config is not None
        or vllm_config.cache_config.kv_offloading_size is not None
    ):
        problems.append(
            "KV connectors (disaggregated prefill, KV offloading) would ship the compacted KV of "
            "layers >= K as if it were full: remove --kv-transfer-config / --kv-offloading-size"
        )
    backend = vllm_config.attention_config.backend
    if backend is not None and backend.name not in SUPPORTED_BACKENDS:
        problems.append(
            f"ILP is not tested on the {backend.name} attention backend: use one of "
            f"{', '.join(sorted(SUPPORTED_BACKENDS))}"
        )
    return problems


def compact_kv_problems(vllm_config: VllmConfig) -> list[str]:
    """What to change so that layers >= K can hold only the kept tokens' KV (empty: fine)."""
    problems = []
    if vllm_config.scheduler_config.disable_hybrid_kv_cache_manager is True:
        problems.append(
            "the saving puts layers < K and >= K in separate KV-cache groups of vLLM's hybrid "
            "KV-cache manager: remove --disable-hybrid-kv-cache-manager"
        )
    scheduler = vllm_config.scheduler_config.scheduler_cls
    if scheduler is not None and scheduler != COMPACT_KV_SCHEDULER:
        problems.append(
            f"the saving needs CROP's scheduler, but --scheduler-cls is {scheduler!r}: remove it"
        )
    multimodal = vllm_config.model_config.multimodal_config
    if (
        multimodal is not None
        and multimodal.mm_processor_cache_type == "shm"
        and multimodal.mm_processor_cache_gb > 0
    ):
        problems.append(
            "the scheduler reads each image's CROP plan from its multimodal features, which the "
            "shared-memory processor cache hides: use --mm-processor-cache-type lru"
        )
    return problems


class CropConfig(VerifyAndUpdateConfig):
    """Startup check of the CROP architectures."""

    @staticmethod
    def verify_and_update_config(vllm_config: VllmConfig) -> None:
        settings = CropSettings.from_hf_config(vllm_config.model_config.hf_config)
        problems = plc_problems(vllm_config)
        if problems:
            raise ValueError(
                "CROP cannot run correctly with these engine settings:\n- " + "\n- ".join(problems)
            )
        if not settings.enable_ilp:
            return
        problems = ilp_problems(vllm_config, settings)
        if problems:
            raise ValueError(
                "CROP inner-LLM pruning (crop_enable_ilp=true) cannot run with these engine "
                "settings:\n- " + "\n- ".join(problems)
            )
        # Cascade attention would share a prefix across requests whose layers >= K differ.
        vllm_config.model_config.disable_cascade_attn = True
        if vllm_config.compilation_config.cudagraph_mode is None:
            # vLLM's default would add FULL graphs (see ilp_problems); piecewise graphs keep
            # attention, and so the kept tokens' metadata, outside the captured pieces.
            vllm_config.compilation_config.cudagraph_mode = CUDAGraphMode.PIECEWISE
        if settings.ilp_compact_kv:
            problems = compact_kv_problems(vllm_config)
            if problems:
                raise ValueError(
                    "CROP's ILP KV saving (crop_ilp_compact_kv=true, the default with ILP) "
                    "cannot run with these engine settings:\n- "
                    + "\n- ".join(problems)
                    + "\nor turn the saving off with crop_ilp_compact_kv=false"
                )
            vllm_config.scheduler_config.scheduler_cls = COMPACT_KV_SCHEDULER


def register(architectures: list[str]) -> None:
    """Attach the check to the CROP architectures (idempotent)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    for name in architectures:
        MODELS_CONFIG_MAP.setdefault(name, CropConfig)
