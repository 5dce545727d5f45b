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
from crop_vllm.options import (
    REQUEST_KEYS,
    CropRequestError,
    ImagePlan,
    encode_plans,
    parse_request,
)
from server.accounting import ModelGeometry
from server.config import GatewayConfig
from server.decoding import LoadedImage
from server.engines import EngineRequest
from server.engines.vllm_api import IMAGE_PART_TYPES, VllmChatRequest, image_url_of, media_type_of
from server.errors import APIError
from server.images import ImageError, ImageLoader
from server.protocol import ChatCompletionRequest, CropImageUsage, CropUsage, Detection

OFF_REASON = "crop mode is off for this request"


@dataclass(frozen=True)
class _Images:
    """A request's image parts, in message order: URL, JSON path and question text of each."""

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
        if body.model is not None and body.model != self.config.model_name:
            raise APIError(
                404,
                f"the model {body.model!r} does not exist; this server serves "
                f"{self.config.model_name!r}",
                param="model",
                code="model_not_found",
            )
        request = self._engine_fields(body)
        found = _images(body.messages)
        limit = self.config.limits.max_images
        if len(found.urls) > limit:
            raise APIError(
                400,
                f"the request has {len(found.urls)} images; at most {limit} are allowed",
                param="messages",
                code="too_many_images",
            )
        mode = self._mode(self.requested_mode(body))
        client_regions = self._client_regions(body, mode, len(found.urls))

        images = await self._load_images(found)
        started = time.perf_counter()
        results = await self._localize(images, found.questions, client_regions, mode)
        localizer_seconds = time.perf_counter() - started
        plans = [ImagePlan(mode, None if r is None else r.region) for r in results]
        pruned = mode is not CropMode.OFF and any(p.region is not None for p in plans)
        engine_request = EngineRequest(
            request_id=request_id,
            request=request,
            images=images,
            crop_kwargs=encode_plans(plans if pruned else None),
        )
        usage = self._usage(images, results, mode, localizer_seconds)
        return Prepared(engine_request, mode, results, usage)

    def _engine_fields(self, body: ChatCompletionRequest) -> VllmChatRequest:
        """The request's vLLM fields (without `crop`), checked against the gateway's limits."""
        limits = self.config.limits
        fields = {name: vars(body)[name] for name in VllmChatRequest.model_fields}
        asked = fields["max_completion_tokens"] or fields["max_tokens"]  # (the latter deprecated)
        if asked is not None and asked > limits.max_tokens:
            raise APIError(
                400,
                f"max_completion_tokens is {asked}; this server allows at most {limits.max_tokens}",
                param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
                code="invalid_value",
            )
        if (body.n or 1) > limits.max_n:
            raise APIError(
                400, f"n is at most {limits.max_n} on this server", param="n", code="invalid_value"
            )
        crop_keys = sorted(set(body.mm_processor_kwargs or ()) & set(REQUEST_KEYS))
        if crop_keys:
            raise APIError(
                400,
                f"mm_processor_kwargs.{crop_keys[0]} is the gateway's to set: use the `crop` "
                "field instead",
                param=f"mm_processor_kwargs.{crop_keys[0]}",
                code="invalid_value",
            )
        given = body.model_fields_set - {"crop"}
        if asked is None and limits.default_max_tokens is not None:
            fields["max_tokens"] = limits.default_max_tokens
            given = given | {"max_tokens"}
        return VllmChatRequest.model_construct(given, **fields)

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

    async def _load_images(self, found: _Images) -> list[LoadedImage]:
        loaded = await asyncio.gather(
            *(self.loader.load(url) for url in found.urls), return_exceptions=True
        )
        for param, outcome in zip(found.params, loaded, strict=True):
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


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return " ".join(
        str(part.get("text") or "")
        for part in content
        if isinstance(part, dict) and media_type_of(part) is None
    ).strip()


def _images(messages: list[Any]) -> _Images:
    """Each image part's URL, JSON path and question: the text of its own message, or of the
    last user message when its message has none. Media the gateway cannot measure (audio,
    video, embeddings, images by uuid) are refused."""
    dicts = [(i, m) for i, m in enumerate(messages) if isinstance(m, dict)]  # not Harmony's
    last_user = next(
        (_text(m.get("content")) for _, m in reversed(dicts) if m.get("role") == "user"), ""
    )
    found = _Images([], [], [])
    for m_index, message in dicts:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        question = _text(content) or last_user
        for p_index, part in enumerate(content):
            kind = media_type_of(part)
            if kind is None:
                continue
            param = f"messages.{m_index}.content.{p_index}"
            if message.get("role") != "user":
                raise APIError(
                    400,
                    f"{param}: images go in user messages (as in OpenAI's API), not in "
                    f"{message.get('role')!r} messages",
                    param=param,
                    code="invalid_value",
                )
            url = image_url_of(part) if kind in IMAGE_PART_TYPES else None
            if url is None or part.get("uuid") is not None:
                raise APIError(
                    400,
                    f"{param}: the gateway takes images as image_url parts with a URL; "
                    f"{kind} parts are not supported",
                    param=param,
                    code="unsupported_content",
                )
            found.urls.append(url)
            nested = isinstance(part.get("image_url"), dict)
            found.params.append(f"{param}.image_url.url" if nested else f"{param}.image_url")
            found.questions.append(question)
    return found
