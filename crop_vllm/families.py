"""The model families CROP serves: one table that names each family everywhere.

A family is keyed by its HF config's `model_type` (what checkpoints, the tiny test models and
`crop_vllm.geometry` call it). Its row says which stock vLLM architecture it extends and the
CROP architecture that replaces it (`--hf-overrides '{"architectures": [...]}'`). Pure data:
importing it loads no model code, so the plugin's `register()`, the gateway and the benchmarks
all read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """One model family CROP serves."""

    model_type: str
    #: What README tables call it.
    title: str
    #: The stock vLLM architecture the CROP class subclasses.
    stock_architecture: str
    #: "module:Class" of the CROP subclass.
    crop_class: str
    #: Its checkpoints bring their config class as remote code (serve with --trust-remote-code).
    remote_code: bool = False

    @property
    def crop_architecture(self) -> str:
        return self.crop_class.rpartition(":")[2]


FAMILIES: tuple[Family, ...] = (
    Family(
        "llava",
        "LLaVA-1.5",
        "LlavaForConditionalGeneration",
        "crop_vllm.models.llava:CropLlavaForConditionalGeneration",
    ),
    Family(
        "llava_next",
        "LLaVA-NeXT",
        "LlavaNextForConditionalGeneration",
        "crop_vllm.models.llava_next:CropLlavaNextForConditionalGeneration",
    ),
    Family(
        "qwen2_5_vl",
        "Qwen2.5-VL",
        "Qwen2_5_VLForConditionalGeneration",
        "crop_vllm.models.qwen2_5_vl:CropQwen2_5_VLForConditionalGeneration",
    ),
    Family(
        "qwen3_vl",
        "Qwen3-VL",
        "Qwen3VLForConditionalGeneration",
        "crop_vllm.models.qwen3_vl:CropQwen3VLForConditionalGeneration",
    ),
    Family(
        "qwen3_vl_moe",
        "Qwen3-VL-MoE",
        "Qwen3VLMoeForConditionalGeneration",
        "crop_vllm.models.qwen3_vl:CropQwen3VLMoeForConditionalGeneration",
    ),
    Family(
        "internvl_chat",
        "InternVL3 / 3.5",
        "InternVLChatModel",
        "crop_vllm.models.internvl:CropInternVLChatModel",
        remote_code=True,
    ),
)

MODEL_TYPES: tuple[str, ...] = tuple(family.model_type for family in FAMILIES)


def family(model_type: str) -> Family:
    """The family of an HF `model_type`, or a ValueError naming the supported ones."""
    for candidate in FAMILIES:
        if candidate.model_type == model_type:
            return candidate
    raise ValueError(f"CROP supports model types {', '.join(MODEL_TYPES)}; got {model_type!r}")


def family_of_architecture(architecture: str) -> Family:
    """The family whose stock or CROP architecture is `architecture` (ValueError otherwise)."""
    for candidate in FAMILIES:
        if architecture in (candidate.stock_architecture, candidate.crop_architecture):
            return candidate
    supported = ", ".join(f.stock_architecture for f in FAMILIES)
    raise ValueError(f"CROP supports {supported}; this model is {architecture}")


def language_config(hf_config: Any) -> Any:
    """The config of a checkpoint's language model: transformers' text config, or InternVL chat
    configs' `llm_config`, which transformers does not know as one."""
    return getattr(hf_config, "llm_config", None) or hf_config.get_text_config()
