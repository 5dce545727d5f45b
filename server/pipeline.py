"""From a validated chat request to an engine request: images, CROP plan, localization, usage.

Shared by the chat endpoint and the preview endpoint, so a preview shows exactly what a chat
request with the same body would prune. Every refusal is an `APIError` raised before the
engine sees anything.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from crop_localizer import (
    LocalizationResult,
    Localizer,
    LocalizerClosed,
    LocalizerError,
    LocalizerOverloaded,
    localize_with_client_regions,
)
from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropRequestError, ImagePlan, encode_plans, parse_request
from server.accounting import ModelGeometry
from server.config import GatewayConfig
from server.decoding import LoadedImage
from server.engines import EngineRequest, SamplingOptions
from server.errors import APIError
from server.images import ImageError, ImageLoader
from server.protocol import (
    ChatCompletionRequest,
    CropImageUsage,
    CropUsage,
    Detection,
    ImagePart,
    TextPart,
)

OFF_REASON = "crop mode is off for this request"


@dataclass(frozen=True)
class _Conversation:
    """Template-ready messages plus each image's URL, JSON path and question text."""

    messages: list[dict[str, Any]]
    urls: list[str]
    params: list[str]
    questions: list[str]


@dataclass(frozen=True)
class Prepared:
    """A request ready for the engine, with what CROP decided for each of its images."""

    engine_request: EngineRequest
    mode: CropMode
    results: list[LocalizationResult | None]
    crop_usage: CropUsage


class Pipeline:
    def __init__(
        self,
        config: GatewayConfig,
        geometry: ModelGeometry,
        loader: ImageLoader,
        localizer: Localizer,
    ) -> None:
        self.config = config
        self.geometry = geometry
        self.loader = loader
        self.localizer = localizer

    def requested_mode(self, body: ChatCompletionRequest) -> str:
        return body.crop.mode if body.crop is not None else self.config.crop.request_mode

    async def prepare(self, body: ChatCompletionRequest, request_id: str) -> Prepared:
        if body.model != self.config.model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server serves "
                f"{self.config.model_name!r}",
                param="model",
                code="model_not_found",
            )
        sampling = self.sampling(body)
        conversation = _conversation(body)
        limit = self.config.limits.max_images
        if len(conversation.urls) > limit:
            raise APIError(
                400,
                f"the request has {len(conversation.urls)} images; at most {limit} are allowed",
                param="messages",
                code="too_many_images",
            )
        mode = self._mode(self.requested_mode(body))
        client_regions = self._client_regions(body, mode, len(conversation.urls))

        images = await self._load_images(conversation)
        started = time.perf_counter()
        results = await self._localize(images, conversation.questions, client_regions, mode)
        localizer_seconds = time.perf_counter() - started
        plans = [ImagePlan(mode, None if r is None else r.region) for r in results]
        pruned = mode is not CropMode.OFF and any(p.region is not None for p in plans)
        engine_request = EngineRequest(
            request_id=request_id,
            messages=conversation.messages,
            images=images,
            mm_kwargs=encode_plans(plans if pruned else None),
            sampling=sampling,
        )
        usage = self._usage(images, results, mode, localizer_seconds)
        return Prepared(engine_request, mode, results, usage)

    def sampling(self, body: ChatCompletionRequest) -> SamplingOptions:
        limits = self.config.limits
        max_tokens = body.max_completion_tokens or body.max_tokens or limits.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(
                400,
                f"max_completion_tokens is {max_tokens}; this server allows at most "
                f"{limits.max_tokens}",
                param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
                code="invalid_value",
            )
        if body.n > limits.max_n:
            raise APIError(
                400, f"n is at most {limits.max_n} on this server", param="n", code="invalid_value"
            )
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(
                400,
                "top_logprobs needs logprobs: true",
                param="top_logprobs",
                code="invalid_value",
            )
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        return SamplingOptions(
            max_tokens=max_tokens,
            n=body.n,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=stop,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        )

    def _client_regions(
        self, body: ChatCompletionRequest, mode: CropMode, num_images: int
    ) -> list[Region | None]:
        """The client's regions (one per image, None where it gave none), checked once against
        the image count and the modes this server runs."""
        regions = body.crop.parsed_regions if body.crop is not None else None
        try:
            parse_request(
                {"crop_mode": mode.value, "crop_regions": regions},
                num_images,
                self.geometry.settings,
            )
        except CropRequestError as exc:
            raise APIError(400, str(exc), param="crop", code="invalid_crop") from None
        return list(regions) if regions is not None else [None] * num_images

    def _mode(self, requested: str) -> CropMode:
        if requested == "auto":
            return self.geometry.settings.default_mode
        return CropMode(requested)

    async def _load_images(self, conversation: _Conversation) -> list[LoadedImage]:
        loaded = await asyncio.gather(
            *(self.loader.load(url) for url in conversation.urls), return_exceptions=True
        )
        for param, outcome in zip(conversation.params, loaded, strict=True):
            if isinstance(outcome, ImageError):
                raise APIError(400, outcome.message, param=param, code=outcome.code)
            if isinstance(outcome, BaseException):
                raise outcome
        return list(loaded)  # type: ignore[arg-type]

    async def _localize(
        self,
        images: list[LoadedImage],
        questions: list[str],
        client: list[Region | None],
        mode: CropMode,
    ) -> list[LocalizationResult | None]:
        """A result per image; None where the mode is off (the localizer is not asked)."""
        if mode is CropMode.OFF or not images:
            return [None] * len(images)
        try:
            return list(
                await localize_with_client_regions(
                    self.localizer, lambda i: images[i].pixels(), questions, client
                )
            )
        except LocalizerOverloaded:
            raise APIError(
                503,
                "the localizer is overloaded; retry shortly",
                code="localizer_overloaded",
                headers={"Retry-After": str(self.config.limits.retry_after_s)},
            ) from None
        except LocalizerClosed:
            raise APIError(503, "the server is shutting down", code="shutting_down") from None
        except LocalizerError as exc:
            raise APIError(500, f"the localizer failed: {exc}", code="localizer_error") from None

    def _usage(
        self,
        images: list[LoadedImage],
        results: list[LocalizationResult | None],
        mode: CropMode,
        localizer_seconds: float,
    ) -> CropUsage:
        per_image = []
        for index, (image, result) in enumerate(zip(images, results, strict=True)):
            region = None if result is None else result.region
            tokens = self.geometry.image_tokens(image.width, image.height, region, mode)
            per_image.append(
                CropImageUsage(
                    index=index,
                    width=image.width,
                    height=image.height,
                    region=None if region is None else region.as_list(),
                    region_source=None if region is None else result.source.value,  # type: ignore[union-attr]
                    cells=None
                    if result is None or result.cells is None
                    else list(result.cells.inclusive()),
                    reason=OFF_REASON if result is None else result.reason,
                    detections=[]
                    if result is None
                    else [
                        Detection(label=d.label, confidence=d.confidence, box=d.box.as_list())
                        for d in result.detections
                    ],
                    localizer_seconds=0.0 if result is None else result.elapsed_s,
                    visual_tokens_full=tokens.full,
                    visual_tokens_after_plc=tokens.after_plc,
                    visual_tokens_after_ilp=tokens.after_ilp,
                )
            )
        full = sum(i.visual_tokens_full for i in per_image)
        after_plc = sum(i.visual_tokens_after_plc for i in per_image)
        after_ilp = sum(i.visual_tokens_after_ilp for i in per_image)
        return CropUsage(
            mode=mode.value,  # type: ignore[arg-type]
            visual_tokens_full=full,
            visual_tokens_after_plc=after_plc,
            visual_tokens_after_ilp=after_ilp,
            saved_fraction=round(1.0 - after_ilp / full, 6) if full else 0.0,
            localizer_seconds=round(localizer_seconds, 6),
            images=per_image,
        )


def _text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(p.text for p in content if isinstance(p, TextPart))


def _conversation(body: ChatCompletionRequest) -> _Conversation:
    """Template messages with `{"type": "image"}` parts; each image's question is the text of
    its own message, or of the last user message when its message has none."""
    last_user = next((_text(m.content) for m in reversed(body.messages) if m.role == "user"), "")
    messages: list[dict[str, Any]] = []
    urls: list[str] = []
    params: list[str] = []
    questions: list[str] = []
    for m_index, message in enumerate(body.messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None or isinstance(content, str):
            messages.append({"role": role, "content": content or ""})
            continue
        parts: list[dict[str, Any]] = []
        question = _text(content) or last_user
        for p_index, part in enumerate(content):
            if isinstance(part, ImagePart):
                parts.append({"type": "image"})
                urls.append(part.image_url.url)
                params.append(f"messages.{m_index}.content.{p_index}.image_url.url")
                questions.append(question)
            else:
                parts.append({"type": "text", "text": part.text})
        messages.append({"role": role, "content": parts})
    return _Conversation(messages, urls, params, questions)
