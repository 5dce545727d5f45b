"""The FastAPI application: OpenAI-compatible chat completions with CROP, preview, health, metrics.

`create_app(config)` builds everything from the configuration at startup (model geometry,
engine, localizer) and closes what it built at shutdown; tests and embedders may pass an
already-started engine or a localizer instead, which then stay theirs to close. Uvicorn drains
in-flight requests before the lifespan shutdown runs, so shutdown is graceful.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from crop_localizer import LocalizationResult, Localizer, build_localizer
from server.accounting import ModelGeometry
from server.config import GatewayConfig
from server.engines import Engine, EngineError, EngineEvent, TokenLogprob
from server.errors import APIError, error_body, install_error_handlers
from server.images import ImageLoader
from server.metrics import GatewayMetrics
from server.middleware import RequestContextMiddleware
from server.pipeline import Pipeline, Prepared
from server.preview import render_preview
from server.protocol import (
    AssistantReply,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Usage,
)
from server.protocol import TokenLogprob as TokenLogprobModel
from server.protocol import TopLogprob as TopLogprobModel

logger = logging.getLogger(__name__)
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request: malformed JSON, wrong types, bad images or CROP options.",
        401: "Missing or wrong API key.",
        404: "Unknown model.",
        413: "Request body too large.",
        429: "Too many concurrent requests (see Retry-After).",
        503: "No engine available, or the localizer is overloaded.",
    }.items()
}


def build_engine(config: GatewayConfig, geometry: ModelGeometry) -> Engine:
    if config.engine == "remote":
        from server.engines.remote import RemoteEngine

        return RemoteEngine(config.remote_urls, retry_interval_s=config.remote_retry_interval_s)
    from server.engines.embedded import EmbeddedEngine

    engine_args = {**geometry.settings.engine_requirements(), **config.engine_args}
    return EmbeddedEngine(
        config.model,
        hf_overrides=geometry.hf_overrides(config.crop.hf_overrides()),
        max_images=config.limits.max_images,
        engine_args=engine_args,
    )


@dataclass
class Gateway:
    """What the routes share, built in the lifespan."""

    config: GatewayConfig
    metrics: GatewayMetrics
    engine: Engine
    pipeline: Pipeline
    active: int = 0
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(
    config: GatewayConfig,
    *,
    engine: Engine | None = None,
    localizer: Localizer | None = None,
) -> FastAPI:
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        geometry = await asyncio.to_thread(
            ModelGeometry.load,
            config.model,
            config.crop.hf_overrides(),
            bool(config.engine_args.get("trust_remote_code", False)),
        )
        async with contextlib.AsyncExitStack() as owned:
            the_engine = engine
            if the_engine is None:
                the_engine = build_engine(config, geometry)
                await the_engine.start()
                owned.push_async_callback(the_engine.aclose)
            the_localizer = localizer
            if the_localizer is None:
                logger.info("localizer: %s", config.localizer.kind.value)
                the_localizer = await asyncio.to_thread(
                    build_localizer, config.localizer, registry=metrics.registry
                )
                owned.push_async_callback(the_localizer.aclose)
            loader = ImageLoader(config.images)
            owned.push_async_callback(loader.aclose)
            app.state.gateway = Gateway(
                config, metrics, the_engine, Pipeline(config, geometry, loader, the_localizer)
            )
            logger.info("serving %s with the %s engine", config.model_name, the_engine.kind)
            yield
            logger.info("shutting down")

    app = FastAPI(
        title="CROP serving gateway",
        version="0.1.0",
        summary="OpenAI-compatible chat completions with question-guided visual-token pruning.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, max_body_bytes=config.limits.max_body_bytes
    )
    _add_routes(app)
    return app


# --------------------------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="An API key, when the server requires one.")


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    keys = gateway(request).config.api_keys
    if not keys:
        return
    given = credentials.credentials.encode() if credentials is not None else b""
    if not any(hmac.compare_digest(given, key.encode()) for key in keys):
        raise APIError(
            401,
            "a valid API key is required (Authorization: Bearer <key>)",
            code="invalid_api_key",
            error_type="invalid_request_error",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def concurrency_slot(request: Request) -> AsyncIterator[None]:
    """Held until the response is fully sent (streams included); refuses when all are taken."""
    gw = gateway(request)
    limits = gw.config.limits
    if gw.active >= limits.max_concurrent_requests:
        raise APIError(
            429,
            f"the server is at its limit of {limits.max_concurrent_requests} concurrent "
            f"requests; retry after {limits.retry_after_s} s",
            code="too_many_concurrent_requests",
            headers={"Retry-After": str(limits.retry_after_s)},
        )
    gw.active += 1
    try:
        yield
    finally:
        gw.active -= 1


GatewayDep = Annotated[Gateway, Depends(gateway)]
_GUARDED = [Depends(authenticate), Depends(concurrency_slot, scope="request")]


# --------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------


def _add_routes(app: FastAPI) -> None:
    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses={
            **_ERRORS,
            200: {
                "description": "A completion, or with `stream: true` server-sent events of "
                "`chat.completion.chunk` objects ending with `data: [DONE]`.",
                "content": {"text/event-stream": {}},
            },
        },
        dependencies=_GUARDED,
    )
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, gw: GatewayDep
    ) -> Response:
        state = request.scope["state"]
        state["crop_mode"] = gw.pipeline.requested_mode(body)

        async def start() -> tuple[Prepared, AsyncIterator[EngineEvent], EngineEvent | None]:
            prepared = await gw.pipeline.prepare(body, state["request_id"])
            events = gw.engine.generate(prepared.engine_request)
            try:
                # The first event surfaces the engine's refusals as proper HTTP errors.
                first = await anext(events, None)
            except EngineError as exc:
                await _aclose(events)
                raise _api_error(exc) from None
            except BaseException:
                await _aclose(events)
                raise
            return prepared, events, first

        prepared, events, first = await _until_disconnect(request, start())
        completion = _Completion(gw, prepared, body, state)
        if body.stream:
            return _EventStream(completion.sse(first, events), state)
        result = await _until_disconnect(request, completion.collect(first, events))
        return JSONResponse(result.model_dump())

    @app.post(
        "/v1/crop/preview",
        response_class=Response,
        responses={
            **_ERRORS,
            200: {
                "description": "The image with the region (red) and the kept visual tokens "
                "(green: full resolution, orange: pooled; dropped cells darkened).",
                "content": {"image/png": {}},
            },
        },
        dependencies=_GUARDED,
    )
    async def crop_preview(
        body: ChatCompletionRequest,
        request: Request,
        gw: GatewayDep,
        image: Annotated[int, Query(ge=0, description="Which image of the request.")] = 0,
    ) -> Response:
        state = request.scope["state"]
        state["crop_mode"] = gw.pipeline.requested_mode(body)
        prepared = await _until_disconnect(request, gw.pipeline.prepare(body, state["request_id"]))
        if image >= len(prepared.images):
            raise APIError(
                400,
                f"the request has {len(prepared.images)} image(s); no image at index {image}",
                param="image",
                code="invalid_value",
            )
        result: LocalizationResult | None = prepared.results[image]
        usage = prepared.crop_usage.images[image]
        region = result.region if result is not None and prepared.mode.uses_plc else None
        picture = prepared.images[image]
        caption = (
            f"CROP {prepared.mode.value}: {usage.visual_tokens_after_plc} of "
            f"{usage.visual_tokens_full} visual tokens"
        )
        png = await asyncio.to_thread(
            render_preview,
            picture,
            gw.pipeline.geometry.grids(picture.width, picture.height),
            region,
            gw.pipeline.geometry.settings.plc,
            caption,
        )
        headers = {
            "X-Crop-Mode": prepared.mode.value,
            "X-Crop-Region": json.dumps(usage.region),
            "X-Crop-Region-Source": usage.region_source or "none",
            "X-Crop-Visual-Tokens-Full": str(usage.visual_tokens_full),
            "X-Crop-Visual-Tokens-Kept": str(usage.visual_tokens_after_plc),
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.get(
        "/v1/models",
        response_model=ModelList,
        responses={401: _ERRORS[401]},
        dependencies=[Depends(authenticate)],
    )
    async def list_models(gw: GatewayDep) -> ModelList:
        return ModelList(data=[ModelCard(id=gw.config.model_name, created=gw.created)])

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health(gw: GatewayDep) -> JSONResponse:
        status = await gw.engine.status()
        body = Health(status="ok" if status.healthy else "unavailable", engine=status.details)
        return JSONResponse(body.model_dump(), status_code=200 if status.healthy else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(gw: GatewayDep) -> Response:
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------------------------
# Completions
# --------------------------------------------------------------------------------------------


class _Completion:
    """Turns engine events into OpenAI responses, and records what was served."""

    def __init__(
        self, gw: Gateway, prepared: Prepared, body: ChatCompletionRequest, state: dict[str, Any]
    ) -> None:
        self.gw = gw
        self.prepared = prepared
        self.body = body
        self.state = state
        self.id = f"chatcmpl-{state['request_id']}"
        self.created = int(time.time())

    def usage(self, event: EngineEvent) -> Usage:
        """The response's usage; recorded in the metrics, as the request was served."""
        prompt = event.prompt_tokens or 0
        completion = event.completion_tokens or 0
        crop = self.prepared.crop_usage
        metrics = self.gw.metrics
        metrics.prompt_tokens.inc(prompt)
        metrics.completion_tokens.inc(completion)
        metrics.visual_tokens.labels("full").inc(crop.visual_tokens_full)
        metrics.visual_tokens.labels("after_plc").inc(crop.visual_tokens_after_plc)
        metrics.visual_tokens.labels("after_ilp").inc(crop.visual_tokens_after_ilp)
        metrics.visual_tokens_saved.inc(crop.visual_tokens_full - crop.visual_tokens_after_ilp)
        for image in crop.images:
            metrics.images.labels(image.region_source or "none").inc()
        if crop.images and self.prepared.mode.value != "off":
            metrics.localization_seconds.observe(crop.localizer_seconds)
            metrics.localization_batch.observe(
                sum(i.region_source != "client" for i in crop.images)
            )
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            crop=crop,
        )

    async def collect(
        self, first: EngineEvent | None, events: AsyncIterator[EngineEvent]
    ) -> ChatCompletion:
        n = self.prepared.engine_request.sampling.n
        texts: list[list[str]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprob] | None] = [
            [] if self.body.logprobs else None for _ in range(n)
        ]
        finish: list[str | None] = [None] * n
        last = EngineEvent()
        try:
            async for event in self.events(first, events):
                for delta in event.deltas:
                    texts[delta.index].append(delta.text)
                    if delta.logprobs is not None and logprobs[delta.index] is not None:
                        logprobs[delta.index].extend(delta.logprobs)  # type: ignore[union-attr]
                    if delta.finish_reason is not None:
                        finish[delta.index] = delta.finish_reason
                last = event
        except EngineError as exc:
            raise _api_error(exc) from None
        finally:
            await _aclose(events)
        choices = [
            Choice(
                index=i,
                message=AssistantReply(content="".join(texts[i])),
                logprobs=_choice_logprobs(logprobs[i]),
                finish_reason=_finish(finish[i]),
            )
            for i in range(n)
        ]
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.gw.config.model_name,
            choices=choices,
            usage=self.usage(last),
        )

    async def events(
        self, first: EngineEvent | None, rest: AsyncIterator[EngineEvent]
    ) -> AsyncIterator[EngineEvent]:
        """`first` then the rest, timing the first generated text (time to first token)."""
        if first is None:
            return
        timed = self._time_first_token(first)
        yield first
        async for event in rest:
            if not timed:
                timed = self._time_first_token(event)
            yield event

    def _time_first_token(self, event: EngineEvent) -> bool:
        if not any(d.text for d in event.deltas):
            return False
        self.gw.metrics.ttft.observe(time.perf_counter() - self.state["started"])
        return True

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.gw.config.model_name,
            choices=choices,
            usage=usage,
        )
        return f"data: {chunk.model_dump_json()}\n\n"

    async def sse(
        self, first: EngineEvent | None, events: AsyncIterator[EngineEvent]
    ) -> AsyncIterator[str]:
        n = self.prepared.engine_request.sampling.n
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        try:
            yield self._chunk(
                [ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(n)]
            )
            last = EngineEvent()
            async for event in self.events(first, events):
                choices = [
                    ChunkChoice(
                        index=d.index,
                        delta=Delta(content=d.text),
                        logprobs=_choice_logprobs(list(d.logprobs))
                        if d.logprobs is not None
                        else None,
                        finish_reason=_finish(d.finish_reason),
                    )
                    for d in event.deltas
                    if d.text or d.finish_reason or d.logprobs
                ]
                if choices:
                    yield self._chunk(choices)
                last = event
            usage = self.usage(last)
            if include_usage:
                yield self._chunk([], usage)
        except EngineError as exc:
            logger.warning("generation failed mid-stream: %s", exc.message)
            self.state["stream_status"] = exc.status
            yield f"data: {json.dumps(error_body(_api_error(exc)))}\n\n"
        finally:
            await _aclose(events)
        yield "data: [DONE]\n\n"


class _EventStream(StreamingResponse):
    """Server-sent events that stop the generation as soon as the client goes away.

    Starlette only notices a vanished client at its next write; this listens for the
    disconnect message instead, cancels the stream (closing the engine's iterator, which aborts
    the request in vLLM or closes the backend connection) and marks the request as 499.
    """

    def __init__(self, content: AsyncIterator[str], state: dict[str, Any]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = False
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    nonlocal completed
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                        completed = True
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                # The server also reports a disconnect once the response is complete.
                self._state["client_gone"] = not completed
                group.cancel_scope.cancel()
        finally:
            await _aclose(self.body_iterator)  # type: ignore[arg-type]


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it when the client disconnects first (a 499 in the metrics)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    request.scope["state"]["client_gone"] = True
    raise APIError(499, "the client closed the request", code="client_closed_request")


async def _aclose(iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def _api_error(exc: EngineError) -> APIError:
    return APIError(exc.status, exc.message, code=exc.code)


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


def _choice_logprobs(entries: list[TokenLogprob] | None) -> ChoiceLogprobs | None:
    if entries is None:
        return None
    return ChoiceLogprobs(
        content=[
            TokenLogprobModel(
                token=e.token,
                logprob=e.logprob,
                bytes=list(e.token.encode()),
                top_logprobs=[
                    TopLogprobModel(token=t.token, logprob=t.logprob, bytes=list(t.token.encode()))
                    for t in e.top
                ],
            )
            for e in entries
        ]
    )
