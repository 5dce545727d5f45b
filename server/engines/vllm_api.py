"""vLLM's OpenAI chat API, as the gateway's contract: what a request may carry and what comes back.

The gateway is a drop-in in front of `vllm serve`, so its chat request is vLLM 0.32's own
request model: every field vLLM accepts (its sampling extensions, chat-template options, tools,
response formats, ...) is accepted and validated by vLLM's own validators, and reaches the
engine as sent. Two differences, both deliberate: fields that neither OpenAI nor vLLM knows are
refused (vLLM ignores them, so a client would believe a typo took effect), and vLLM's
validation errors name the field they are about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from vllm.entrypoints.generate.base.protocol import StreamOptions
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as _VllmChatCompletionRequest,
)
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
from vllm.entrypoints.serve.engine.protocol import UsageInfo
from vllm.exceptions import VLLMValidationError
from vllm.renderers.chat_utils import MM_PARSER_MAP, TEXT_PART_TYPES
from vllm.version import __version__ as VLLM_VERSION

__all__ = [
    "VLLM_VERSION",
    "ChatCompletionResponse",
    "StreamOptions",
    "UsageInfo",
    "VllmChatRequest",
    "image_url_of",
    "media_type_of",
    "replace_images",
]

#: Content-part types vLLM reads as media (images, audio, video, embeddings).
MEDIA_PART_TYPES = frozenset(MM_PARSER_MAP) - TEXT_PART_TYPES - {"tool_reference"}
#: The image parts the gateway loads, measures and prunes (OpenAI's and the Responses API's).
IMAGE_PART_TYPES = frozenset({"image_url", "input_image"})


class VllmChatRequest(_VllmChatCompletionRequest):
    """vLLM's chat request with unknown fields refused and its errors located at their field.

    vLLM's own "before" validators run on raw data and can trip over a wrongly typed field
    (a TypeError, which `vllm serve` answers with 400 too): those become validation errors.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _located_errors(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(data)
        except (VLLMValidationError, TypeError) as exc:
            parameter = getattr(exc, "parameter", None)
            loc = tuple(parameter.split(".")) if parameter else ()
            error = PydanticCustomError("value_error", "{reason}", {"reason": str(exc.args[0])})
            value = getattr(exc, "value", None)
            raise ValidationError.from_exception_data(
                cls.__name__, [InitErrorDetails(type=error, loc=loc, input=value)]
            ) from None


def media_type_of(part: object) -> str | None:
    """The media type of a message content part (as vLLM reads it), None for text parts."""
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind is None:  # vLLM also takes parts with no type but a media key
        return next((key for key in MEDIA_PART_TYPES if key in part), None)
    return kind if kind in MEDIA_PART_TYPES else None


def image_url_of(part: dict[str, Any]) -> str | None:
    """The URL of an image part (`{"image_url": {"url": ...}}` or `{"image_url": "..."}`)."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) else None


def replace_images(messages: list[Any], replacement: Callable[[int], dict[str, Any]]) -> list[Any]:
    """`messages` with their n-th image part replaced by `replacement(n)`, in message order
    (the order in which the gateway loaded the images); other parts are kept as they are."""
    count = 0

    def swap(part: Any) -> Any:
        nonlocal count
        if media_type_of(part) not in IMAGE_PART_TYPES:
            return part
        count += 1
        return replacement(count - 1)

    replaced = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            message = {**message, "content": [swap(part) for part in content]}
        replaced.append(message)
    return replaced
