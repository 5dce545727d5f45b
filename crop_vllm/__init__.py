"""CROP (contextual region-oriented visual token pruning) as a vLLM plugin.

`register` is the `vllm.general_plugins` entry point. vLLM calls it once in every process (API
server, engine core, workers); registering is idempotent and imports no model code: vLLM loads
the CROP classes lazily when a config names their architecture.
"""


def register() -> None:
    """Register the CROP architectures with vLLM's model registry and their startup check,
    after checking that this vLLM is the one the plugin's processor overrides were built for.

    The model-runner patch inner-LLM pruning needs is applied (and checked) by a CROP model that
    enables ILP, when the worker builds it (importing the runner here would slow every process
    down by seconds).
    """
    from vllm import ModelRegistry

    from crop_vllm.families import FAMILIES
    from crop_vllm.ilp import startup
    from crop_vllm.vllm_surface import PROCESSOR_TOUCHPOINTS, check_vllm

    check_vllm(PROCESSOR_TOUCHPOINTS)
    supported = set(ModelRegistry.get_supported_archs())
    for family in FAMILIES:
        if family.crop_architecture not in supported:
            ModelRegistry.register_model(family.crop_architecture, family.crop_class)
    startup.register([family.crop_architecture for family in FAMILIES])
