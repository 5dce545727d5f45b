"""The gateway's HTTP contract: pydantic models for requests, responses and errors.

Kept apart from the serving logic so the OpenAPI schema (and the tests that exercise it) describe
exactly what clients may send and what they get back. The chat models are vLLM's own
(`server.engines.vllm_api`): every field `vllm serve` accepts is accepted and validated as vLLM
validates it, and responses are vLLM's. CROP adds the optional request field `crop` and the
response field `usage.crop`. Fields neither OpenAI nor vLLM knows are refused (400) rather than
silently ignored, so a client never believes a parameter took effect when it did not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from crop_vllm.layout import CropMode, Region
from server.engines.vllm_api import (
    ChatCompletionResponse,
    UsageInfo,
    VllmChatRequest,
)

#: The plugin's modes, by name.
CROP_MODES = tuple(mode.value for mode in CropMode)
#: Modes a client may ask for: the gateway's own `auto` lets the server's default pruning apply
#: to the regions the localizer (or the client) supplies; the plugin's modes name it explicitly.
REQUEST_MODES = ("auto", *CROP_MODES)
RequestCropMode = Literal[REQUEST_MODES]  # type: ignore[valid-type]
AppliedCropMode = Literal[CROP_MODES]  # type: ignore[valid-type]

#: [x0, y0, x1, y1] normalized to the image; x0 <= x1 and y0 <= y1 are checked on top.
RegionList = Annotated[
    list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=4, max_length=4)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class CropOptions(_Strict):
    """Per-request CROP control."""

    mode: RequestCropMode = Field(
        "auto",
        description=(
            "`auto`: the server's default pruning, on the regions the localizer finds (or the "
            "client gives); `off`: no pruning, no localizer; `plc`, `ilp`, `plc+ilp`: that "
            "pruning. ILP modes are refused with 400 unless the server enables ILP."
        ),
    )
    regions: list[RegionList | None] | None = Field(
        None,
        description=(
            "One entry per image, in message order: [x0, y0, x1, y1] normalized to 0..1 "
            "(x to the right, y down), or null to let the localizer decide for that image. "
            "A client region always wins over the localizer."
        ),
    )

    _parsed: list[Region | None] | None = PrivateAttr(None)

    @field_validator("regions")
    @classmethod
    def _valid_regions(cls, value: list[RegionList | None] | None) -> list[RegionList | None]:
        for index, raw in enumerate(value or ()):
            if raw is not None:
                try:
                    Region.parse(raw)
                except ValueError as exc:
                    raise ValueError(f"regions[{index}]: {exc}") from None
        return value

    def model_post_init(self, context: object, /) -> None:
        # The regions just validated, kept as `Region`s so they are never parsed again.
        if self.regions is not None:
            self._parsed = [None if r is None else Region(*r) for r in self.regions]

    @property
    def parsed_regions(self) -> list[Region | None] | None:
        return self._parsed


class ChatCompletionRequest(VllmChatRequest):
    """vLLM's chat completion request, plus CROP's control."""

    crop: CropOptions | None = None


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


class Detection(BaseModel):
    label: str
    confidence: float
    box: list[float] = Field(description="[x0, y0, x1, y1] normalized to the image.")


class CropImageUsage(BaseModel):
    """What CROP did to one image."""

    index: int = Field(description="The image's position in the request (message order).")
    width: int
    height: int
    region: list[float] | None = Field(
        description="[x0, y0, x1, y1] used for pruning, or null when the image was not pruned."
    )
    region_source: Literal["client", "localizer"] | None
    cells: list[int] | None = Field(
        description="The region on the paper's 8x8 grid: [x_min, y_min, x_max, y_max], inclusive."
    )
    reason: str | None = Field(description="Why the image was not pruned (null when it was).")
    detections: list[Detection] = Field(default_factory=list)
    localizer_seconds: float
    visual_tokens_full: int
    visual_tokens_after_plc: int
    visual_tokens_after_ilp: int


class CropKvUsage(BaseModel):
    """The KV cache one request held at its end, with and without ILP's KV saving.

    A layer-block is one decoder layer's KV for `block_size` tokens. Without the saving every
    layer holds every token: L * ceil(T / block_size) for T tokens and L layers. With it (ILP
    modes, `crop_ilp_compact_kv`), layers from K on hold only the tokens ILP keeps:
    K * ceil(T / block_size) + (L - K) * ceil((T - D) / block_size) for D dropped tokens.
    """

    block_size: int = Field(description="Tokens per KV-cache block of the engine that served.")
    dtype: str | None = Field(description="The KV elements' dtype (null: unknown).")
    tokens: int = Field(description="Tokens the request held: prompt and completion.")
    dropped_tokens: int = Field(
        description="Tokens whose KV the layers from K on do not hold (0 without the saving)."
    )
    layer_blocks_without_saving: int
    layer_blocks_with_saving: int = Field(
        description="What the engine held; equal to layer_blocks_without_saving when the "
        "saving does not apply (no ILP, or crop_ilp_compact_kv off)."
    )
    bytes_without_saving: int | None = Field(
        description="layer_blocks_without_saving * block_size * 2 * KV heads * head size * "
        "bytes per element; null for packed KV dtypes (4-bit, per-token scales)."
    )
    bytes_with_saving: int | None
    saved_fraction: float = Field(
        description="1 - layer_blocks_with_saving / layer_blocks_without_saving."
    )


class CropUsage(BaseModel):
    """Visual-token accounting of one request (all images together)."""

    mode: AppliedCropMode = Field(description="The pruning applied to images that have a region.")
    visual_tokens_full: int = Field(description="Visual tokens the unpruned model would use.")
    visual_tokens_after_plc: int = Field(
        description="Visual tokens prefilled after pre-LLM compression (PLC)."
    )
    visual_tokens_after_ilp: int = Field(
        description=(
            "Visual tokens kept after inner-LLM pruning (ILP) in the later decoder layers; "
            "equal to visual_tokens_after_plc when ILP is off."
        )
    )
    saved_fraction: float = Field(
        description="1 - visual_tokens_after_ilp / visual_tokens_full (0 without images)."
    )
    localizer_seconds: float = Field(description="Wall time of the localization stage.")
    images: list[CropImageUsage]
    kv: CropKvUsage | None = Field(
        None,
        description="The KV cache the request held; null where the engine does not say its "
        "block size (a `vllm serve` backend without its `vllm:cache_config_info` metric).",
    )


class Usage(UsageInfo):
    """vLLM's usage, with what CROP did."""

    crop: CropUsage


class ChatCompletion(ChatCompletionResponse):
    """vLLM's chat completion (the gateway's id and model name), with `usage.crop`."""

    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "crop-serving"
    root: str | None = Field(None, description="The checkpoint the engine serves.")
    max_model_len: int | None = Field(None, description="The engine's context length.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Version(BaseModel):
    version: str = Field(description="This gateway's (crop-serving's) version.")
    vllm: list[str] = Field(description="The vLLM versions serving (the backends' own).")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    engine: dict[str, object] = Field(description="The engine's own view (kind, backends, ...).")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
