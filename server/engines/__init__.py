"""The one seam between the gateway and vLLM: what an engine takes and what it streams back.

The gateway prepares everything CROP needs (decoded images, the per-image plan as
`mm_processor_kwargs`, sampling options) and hands an `EngineRequest` to an `Engine`. Two
implementations: `embedded` (vLLM's AsyncLLM in this process) and `remote` (`vllm serve`
backends over HTTP). Neither leaks vLLM types past this interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.decoding import LoadedImage


@dataclass(frozen=True)
class SamplingOptions:
    """OpenAI sampling fields, already validated; `top_logprobs` None means no logprobs."""

    max_tokens: int
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int | None = None


@dataclass(frozen=True)
class EngineRequest:
    """A chat turn ready for an engine.

    `messages` are chat-template messages whose content is a string or a list of
    `{"type": "text", "text": ...}` and `{"type": "image"}` parts; the image parts stand for
    `images`, in order. `mm_kwargs` is the CROP plan (`crop_mode`, `crop_regions`), empty when
    CROP leaves every image alone.
    """

    request_id: str
    messages: list[dict[str, Any]]
    images: list[LoadedImage]
    mm_kwargs: dict[str, object]
    sampling: SamplingOptions


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ChoiceDelta:
    """New text of one completion; `finish_reason` is set on its last delta."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class EngineEvent:
    """One step of a generation; the last event carries the token counts."""

    deltas: tuple[ChoiceDelta, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class EngineStatus:
    healthy: bool
    details: dict[str, Any] = field(default_factory=dict)


class EngineError(Exception):
    """A generation failed; `status` is what the client sees (the message is safe to show)."""

    status = 500
    code = "engine_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EngineBadRequest(EngineError):
    """The engine refused the request's content (CROP options, prompt too long, ...)."""

    status = 400
    code = "invalid_request"


class EngineUnavailable(EngineError):
    """No engine can serve right now (dead engine, every backend down)."""

    status = 503
    code = "engine_unavailable"


class Engine(Protocol):
    """What the gateway needs from an engine."""

    kind: str

    async def start(self) -> None:
        """Start (or connect); raises when the engine cannot serve at all."""

    async def aclose(self) -> None:
        """Stop, after the gateway finished its in-flight requests."""

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        """Stream the generation; closing the iterator early aborts it in the engine."""
        ...

    async def status(self) -> EngineStatus:
        """Alive or not, with details for `/health` (requests in flight, backends)."""
        ...
