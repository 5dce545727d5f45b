"""Chat completions: from a prepared request to the client's response, streamed or whole.

`ChatCompletionResponder` turns the engine's events into OpenAI's chat completion (or its
server-sent chunks), adds `usage.crop`, and records what was served in the metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

from server.disconnect import aclose
from server.engines import EngineError, EngineEvent, TokenLogprob
from server.errors import APIError, error_body
from server.gateway import Gateway
from server.pipeline import Prepared
from server.protocol import (
    AssistantReply,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    Usage,
)
from server.protocol import TokenLogprob as TokenLogprobModel
from server.protocol import TopLogprob as TopLogprobModel
from server.request_state import RequestState

logger = logging.getLogger(__name__)


class ChatCompletionResponder:
    """Answers one chat request from its engine events."""

    def __init__(
        self, gw: Gateway, prepared: Prepared, body: ChatCompletionRequest, state: RequestState
    ) -> None:
        self.gw = gw
        self.prepared = prepared
        self.body = body
        self.state = state
        self.id = f"chatcmpl-{state.request_id}"
        self.created = int(time.time())

    def _usage(self, event: EngineEvent) -> Usage:
        """The response's usage; the request counts as served from here on."""
        prompt = event.prompt_tokens or 0
        completion = event.completion_tokens or 0
        crop = self.prepared.crop_usage
        self.gw.metrics.record_served(crop, self.prepared.mode, prompt, completion)
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
            async for event in self._events(first, events):
                for delta in event.deltas:
                    texts[delta.index].append(delta.text)
                    if delta.logprobs is not None and logprobs[delta.index] is not None:
                        logprobs[delta.index].extend(delta.logprobs)  # type: ignore[union-attr]
                    if delta.finish_reason is not None:
                        finish[delta.index] = delta.finish_reason
                last = event
        except EngineError as exc:
            raise api_error(exc) from None
        finally:
            await aclose(events)
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
            usage=self._usage(last),
        )

    async def _events(
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
        self.gw.metrics.ttft.observe(time.perf_counter() - self.state.started)
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
            async for event in self._events(first, events):
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
            usage = self._usage(last)
            if include_usage:
                yield self._chunk([], usage)
        except EngineError as exc:
            logger.warning("generation failed mid-stream: %s", exc.message)
            self.state.stream_status = exc.status
            yield f"data: {json.dumps(error_body(api_error(exc)))}\n\n"
        finally:
            await aclose(events)
        yield "data: [DONE]\n\n"


def api_error(exc: EngineError) -> APIError:
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
