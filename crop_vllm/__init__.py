"""CROP (contextual region-oriented visual token pruning) as a vLLM plugin.

`register` is the `vllm.general_plugins` entry point. vLLM calls it once in every process (API
server, engine core, workers); registering is idempotent and imports no model code: vLLM loads
the CROP classes lazily when a config names their architecture.
"""

#: Architecture name -> "module:Class" of its CROP subclass.
CROP_ARCHITECTURES = {
    "CropLlavaForConditionalGeneration": "crop_vllm.models.llava:CropLlavaForConditionalGeneration",
    "CropLlavaNextForConditionalGeneration": (
        "crop_vllm.models.llava_next:CropLlavaNextForConditionalGeneration"
    ),
    "CropQwen2_5_VLForConditionalGeneration": (
        "crop_vllm.models.qwen2_5_vl:CropQwen2_5_VLForConditionalGeneration"
    ),
}

#: Stock architecture -> its CROP architecture (what `--hf-overrides` switches to).
CROP_OF = {
    "LlavaForConditionalGeneration": "CropLlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration": "CropLlavaNextForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "CropQwen2_5_VLForConditionalGeneration",
}


def register() -> None:
    """Register the CROP architectures with vLLM's model registry and their startup check.

    The model-runner patch inner-LLM pruning needs is applied by a CROP model that enables ILP,
    when the worker builds it (importing the runner here would slow every process down).
    """
    from vllm import ModelRegistry

    from crop_vllm.ilp import startup

    supported = set(ModelRegistry.get_supported_archs())
    for name, target in CROP_ARCHITECTURES.items():
        if name not in supported:
            ModelRegistry.register_model(name, target)
    startup.register(list(CROP_ARCHITECTURES))
