"""Chat completions: from a prepared request to the client's response, streamed or whole.

The engine answers with vLLM's own response objects; `ChatCompletionResponder` passes them on
as `vllm serve` would send them, with the gateway's completion id and model name, `usage.crop`
added to the usage, and the usage chunk of a stream dropped again when the client did not ask
for it (the gateway always asks the engine for usage). It records what was served in the
metrics, including whether the engine's image tokens match the gateway's accounting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from server.disconnect import aclose
from server.engines import EngineError, Response
from server.errors import APIError, error_body
from server.gateway import Gateway
from server.pipeline import Prepared
from server.protocol import CropUsage
from server.request_state import RequestState

logger = logging.getLogger(__name__)


class ChatCompletionResponder:
    """Answers one chat request from its engine's answers."""

    def __init__(self, gw: Gateway, prepared: Prepared, state: RequestState) -> None:
        self.gw = gw
        self.prepared = prepared
        self.state = state
        self.id = f"chatcmpl-{state.request_id}"
        request = prepared.engine_request.request
        options = request.stream_options
        self.include_usage = bool(options and options.include_usage)

    async def collect(self, first: Response | None, rest: AsyncIterator[Response]) -> Response:
        """The whole completion (the engine's one answer)."""
        try:
            async for answer in rest:  # a completion is one answer; drain to close cleanly
                first = answer
        except EngineError as exc:
            raise api_error(exc) from None
        finally:
            await aclose(rest)
        if first is None:
            raise APIError(502, "the engine gave no answer", code="engine_error")
        self._own(first)
        self._served(first["usage"])
        return first

    async def sse(
        self, first: Response | None, rest: AsyncIterator[Response]
    ) -> AsyncIterator[str]:
        """The server-sent events of a stream, ending with `data: [DONE]`."""
        timed = False
        try:
            chunk = first
            while chunk is not None:
                self._own(chunk)
                if not timed and _has_output(chunk):
                    self.gw.metrics.ttft.observe(time.perf_counter() - self.state.started)
                    timed = True
                final = not chunk.get("choices") and chunk.get("usage") is not None
                if final:
                    self._served(chunk["usage"])
                if not final or self.include_usage:
                    yield _event(chunk)
                chunk = await anext(rest, None)
        except EngineError as exc:
            logger.warning("generation failed mid-stream: %s", exc.message)
            self.state.stream_status = exc.status
            yield _event(error_body(api_error(exc)))
        finally:
            await aclose(rest)
        yield "data: [DONE]\n\n"

    def _own(self, answer: Response) -> None:
        answer["id"] = self.id
        answer["model"] = self.gw.config.model_name

    def _served(self, usage: dict[str, Any]) -> None:
        """Add `usage.crop`; the request counts as served from here on."""
        crop = self._with_kv(self.prepared.crop_usage, usage)
        metrics = self.gw.metrics
        metrics.record_served(
            crop,
            self.prepared.mode,
            usage.get("prompt_tokens") or 0,
            usage.get("completion_tokens") or 0,
        )
        details = usage.get("prompt_tokens_details")
        engine_images = None
        if details is not None:
            engine_images = (details.get("multimodal_tokens") or {}).get("image", 0)
        if not metrics.record_image_token_check(engine_images, crop.visual_tokens_after_plc):
            logger.warning(
                "the engine prefilled %s image tokens, the gateway counted %d: its CROP "
                "settings or model differ from the gateway's",
                engine_images,
                crop.visual_tokens_after_plc,
            )
        usage["crop"] = crop.model_dump()

    def _with_kv(self, crop: CropUsage, usage: dict[str, Any]) -> CropUsage:
        """`crop` with the KV cache the request held: its prompt and completion tokens, in
        the blocks of the engine that served it (unchanged when that engine did not say)."""
        kv_cache = self.prepared.engine_request.served_by.kv_cache
        if kv_cache is None:
            return crop
        tokens = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        dropped = crop.visual_tokens_after_plc - crop.visual_tokens_after_ilp
        kv = self.gw.pipeline.geometry.kv_usage(tokens, dropped, kv_cache)
        return crop.model_copy(update={"kv": kv})


async def timed(answers: AsyncIterator[Response], state: RequestState) -> AsyncIterator[Response]:
    """`answers`, adding the time spent waiting for each to `state.engine_seconds`."""
    state.engine_seconds = state.engine_seconds or 0.0
    try:
        while True:
            started = time.perf_counter()
            try:
                answer = await anext(answers)
            except StopAsyncIteration:
                return
            finally:
                state.engine_seconds += time.perf_counter() - started
            yield answer
    finally:
        await aclose(answers)


def api_error(exc: EngineError) -> APIError:
    return APIError(exc.status, exc.message, code=exc.code, param=exc.param)


def _has_output(chunk: Response) -> bool:
    return any(
        delta.get("content") or delta.get("reasoning") or delta.get("tool_calls")
        for choice in chunk.get("choices") or ()
        if (delta := choice.get("delta"))
    )


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"
