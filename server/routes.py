"""The gateway's HTTP routes, on one `APIRouter` that `create_app` includes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import GUARDED, GatewayDep, authenticate
from server.disconnect import EventStream, aclose, until_disconnect
from server.engines import EngineError
from server.engines import Response as EngineResponse
from server.errors import APIError
from server.pipeline import Prepared
from server.preview import preview_response
from server.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    Version,
)
from server.request_state import RequestState
from server.serving_chat import ChatCompletionResponder, api_error, timed
from server.version import CROP_SERVING_VERSION

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
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


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        **ERRORS,
        200: {
            "description": "A completion, or with `stream: true` server-sent events of "
            "`chat.completion.chunk` objects ending with `data: [DONE]`.",
            "content": {"text/event-stream": {}},
        },
    },
    dependencies=GUARDED,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, gw: GatewayDep
) -> Response:
    state = RequestState.of(request.scope)
    state.crop_mode = gw.pipeline.requested_mode(body)
    gw.check_serving()

    async def start() -> tuple[Prepared, AsyncIterator[EngineResponse], EngineResponse | None]:
        prepared = await gw.pipeline.prepare(body, state.request_id)
        state.localizer_seconds = prepared.crop_usage.localizer_seconds
        answers = timed(gw.engine.generate(prepared.engine_request), state)
        try:
            # The first answer surfaces the engine's refusals as proper HTTP errors.
            first = await anext(answers, None)
        except EngineError as exc:
            await aclose(answers)
            raise api_error(exc) from None
        except BaseException:
            await aclose(answers)
            raise
        return prepared, answers, first

    prepared, answers, first = await until_disconnect(request, start())
    responder = ChatCompletionResponder(gw, prepared, state)
    if body.stream:
        return EventStream(responder.sse(first, answers), state)
    return JSONResponse(await until_disconnect(request, responder.collect(first, answers)))


@router.post(
    "/v1/crop/preview",
    response_class=Response,
    responses={
        **ERRORS,
        200: {
            "description": "The image with the region (red) and the kept visual tokens "
            "(green: full resolution, orange: pooled; dropped cells darkened).",
            "content": {"image/png": {}},
        },
    },
    dependencies=GUARDED,
)
async def crop_preview(
    body: ChatCompletionRequest,
    request: Request,
    gw: GatewayDep,
    image: Annotated[int, Query(ge=0, description="Which image of the request.")] = 0,
) -> Response:
    state = RequestState.of(request.scope)
    state.crop_mode = gw.pipeline.requested_mode(body)
    gw.check_serving()
    prepared = await until_disconnect(request, gw.pipeline.prepare(body, state.request_id))
    count = len(prepared.engine_request.images)
    if image >= count:
        raise APIError(
            400,
            f"the request has {count} image(s); no image at index {image}",
            param="image",
            code="invalid_value",
        )
    return await preview_response(prepared, image, gw.pipeline.geometry)


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses={401: ERRORS[401]},
    dependencies=[Depends(authenticate)],
)
async def list_models(gw: GatewayDep) -> ModelList:
    """The model clients name: what the engine (or its backends) serves, under the gateway's
    name."""
    served = await gw.engine.served_model()
    card = ModelCard(
        id=gw.config.model_name,
        created=gw.created,
        root=served.root,
        max_model_len=served.max_model_len,
    )
    return ModelList(data=[card])


@router.get("/version", response_model=Version)
async def version(gw: GatewayDep) -> Version:
    return Version(version=CROP_SERVING_VERSION, vllm=gw.engine.vllm_versions())


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(gw: GatewayDep) -> JSONResponse:
    status = await gw.engine.status()
    body = Health(status="ok" if status.healthy else "unavailable", engine=status.details)
    return JSONResponse(body.model_dump(), status_code=200 if status.healthy else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(gw: GatewayDep) -> Response:
    """The gateway's `crop_*` metrics, and vLLM's own `vllm:*` when the engine is embedded."""
    body = generate_latest(gw.metrics.registry) + gw.engine.engine_metrics()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
