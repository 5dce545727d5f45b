"""The one seam between the gateway and vLLM: what an engine takes and what it answers.

The gateway validates a chat request with vLLM's own request model (`vllm_api`), loads its
images and decides the CROP plan, then hands an `EngineRequest` to an `Engine`. The engine
answers with vLLM's own OpenAI responses as JSON objects, which the gateway passes on with
`usage.crop` added, so every field vLLM supports reaches the client as `vllm serve` would send
it. Two implementations: `embedded` (vLLM's serving layer on an AsyncLLM in this process) and
`remote` (`vllm serve` backends over HTTP). Only `server/engines/` imports vLLM.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.decoding import LoadedImage
from server.engines.vllm_api import StreamOptions, VllmChatRequest

#: vLLM's response objects as JSON: a chat completion, or one `chat.completion.chunk`.
Response = dict[str, Any]


@dataclass(frozen=True)
class KvCacheFacts:
    """What an engine says about its KV cache: tokens per block, and the element type (vLLM's
    `--kv-cache-dtype`; with `auto` the model's dtype, `model_dtype`, None where the engine
    does not say which)."""

    block_size: int
    cache_dtype: str
    model_dtype: str | None = None


@dataclass
class ServedBy:
    """Filled in by the engine as it answers a request: facts of whoever served it."""

    #: None when the engine (a remote backend) does not say.
    kv_cache: KvCacheFacts | None = None


@dataclass(frozen=True)
class EngineRequest:
    """A chat request ready for an engine.

    `request` holds the client's fields as vLLM validated them; `images` are its image parts,
    loaded, in message order; `crop_kwargs` is the CROP plan (`crop_mode`, `crop_regions`) the
    engine adds to `mm_processor_kwargs`, empty when CROP leaves every image alone; the engine
    fills in `served_by`.
    """

    request_id: str
    request: VllmChatRequest
    images: list[LoadedImage]
    crop_kwargs: dict[str, object]
    served_by: ServedBy = field(default_factory=ServedBy)

    def mm_processor_kwargs(self) -> dict[str, Any] | None:
        merged = {**(self.request.mm_processor_kwargs or {}), **self.crop_kwargs}
        return merged or None

    def stream_options(self) -> StreamOptions | None:
        """The client's stream options, with usage always on: the gateway needs the counts
        (it drops the usage chunk again when the client did not ask for it)."""
        if not self.request.stream:
            return None
        options = self.request.stream_options or StreamOptions()
        return options.model_copy(update={"include_usage": True})


@dataclass
class EngineStatus:
    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServedModel:
    """What an engine serves: the checkpoint and its context length (None when unknown)."""

    root: str | None
    max_model_len: int | None


class EngineError(Exception):
    """A generation failed; `status` is what the client sees (the message is safe to show)."""

    status = 500
    code = "engine_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class EngineBadRequest(EngineError):
    """The engine refused the request's content (CROP options, prompt too long, ...)."""

    status = 400
    code = "invalid_request"


class EngineUnavailable(EngineError):
    """No engine can serve right now (dead engine, every backend down)."""

    status = 503
    code = "engine_unavailable"


def refusal(status: int, message: str, param: str | None = None) -> EngineError:
    """vLLM's error answer as the gateway's error: 4xx are the client's, 5xx the engine's."""
    if 400 <= status < 500:
        error = EngineBadRequest(message, param)
        if status != 400:
            error.status = status
        return error
    return EngineUnavailable(message) if status == 503 else EngineError(message)


class Engine(Protocol):
    """What the gateway needs from an engine."""

    kind: str

    async def start(self) -> None:
        """Start (or connect); raises when the engine cannot serve at all."""

    async def aclose(self) -> None:
        """Stop, after the gateway finished its in-flight requests."""

    def generate(self, request: EngineRequest) -> AsyncIterator[Response]:
        """vLLM's answer: with `request.request.stream` its chunks (the last one with `usage`),
        else one chat completion; `request.served_by` is filled in before the first answer.
        Closing the iterator early aborts the generation."""
        ...

    async def status(self) -> EngineStatus:
        """Alive or not, with details for `/health` (requests in flight, backends)."""
        ...

    async def served_model(self) -> ServedModel:
        """The checkpoint the engine serves, as `/v1/models` shows it."""
        ...

    def vllm_versions(self) -> list[str]:
        """The vLLM versions serving (one per distinct version among backends)."""
        ...

    def engine_metrics(self) -> bytes:
        """vLLM's own `vllm:*` metrics in Prometheus' text format, when they live in this
        process (embedded); remote engines serve theirs on their own `/metrics`."""
        ...

    async def wait_dead(self) -> None:
        """Return once the engine can never serve again (an embedded engine whose process
        died); engines that recover by themselves never return."""
        ...
