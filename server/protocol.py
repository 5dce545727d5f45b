"""The gateway's HTTP contract: pydantic models for requests, responses and errors.

Kept apart from the serving logic so the OpenAPI schema (and the tests that exercise it) describe
exactly what clients may send and what they get back. The chat models follow OpenAI's Chat
Completions API; CROP adds the optional request field `crop` and the response field `usage.crop`.
Unknown request fields are refused (400) rather than silently ignored, so a client never believes
a parameter took effect when it did not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from crop_vllm.layout import CropMode, Region

#: The plugin's modes, by name.
CROP_MODES = tuple(mode.value for mode in CropMode)
#: Modes a client may ask for: the gateway's own `auto` lets the server's default pruning apply
#: to the regions the localizer (or the client) supplies; the plugin's modes name it explicitly.
REQUEST_MODES = ("auto", *CROP_MODES)
RequestCropMode = Literal[REQUEST_MODES]  # type: ignore[valid-type]
AppliedCropMode = Literal[CROP_MODES]  # type: ignore[valid-type]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: [x0, y0, x1, y1] normalized to the image; x0 <= x1 and y0 <= y1 are checked on top.
RegionList = Annotated[
    list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=4, max_length=4)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(description="A `data:image/...;base64,` URL or an http(s) URL.")
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="Accepted for compatibility; the model's own resolution applies."
    )


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


UserContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class SystemMessage(_Strict):
    role: Literal["system", "developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = Field(
        False, description="Send a last chunk with `usage` (including `usage.crop`)."
    )


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


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated alias of the next field.")
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=_INT64_MIN, le=_INT64_MAX)
    stop: str | Annotated[list[str], Field(max_length=4)] | None = Field(
        None, description="Up to 4 stop strings."
    )
    n: int = Field(1, ge=1, description="Completions per request (the server sets a maximum).")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
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


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    crop: CropUsage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


FinishReason = Literal["stop", "length"]


class AssistantReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantReply
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "crop-serving"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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
