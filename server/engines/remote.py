"""Remote engine: one or more `vllm serve` backends running the CROP plugin, over HTTP.

Backends must run with `--trust-request-mm-kwargs` (the CROP plan travels as the top-level
`mm_processor_kwargs` of the chat request) and with the same `--hf-overrides` CROP settings as
the gateway, so its token accounting matches what they prune. Requests go to the healthy backend
with the fewest outstanding requests. A backend that refuses connections or answers 5xx is taken
out and probed again every `retry_interval_s`; the request moves on to another backend as long
as nothing has been streamed to the client yet. A connection the backend closed as a request
arrived (an idle keep-alive connection) is retried once on a new one before the backend counts
as down. Every call streams from the backend, so closing the client's stream closes the backend
connection, and vLLM aborts the request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from server.decoding import LoadedImage
from server.engines import (
    ChoiceDelta,
    EngineBadRequest,
    EngineError,
    EngineEvent,
    EngineRequest,
    EngineStatus,
    EngineUnavailable,
    TokenLogprob,
    TopLogprob,
)

logger = logging.getLogger(__name__)

#: Idle pooled connections are dropped after this long: below uvicorn's (so vLLM's) 5 s
#: keep-alive timeout, so the gateway does not send on a connection the backend is closing.
KEEPALIVE_EXPIRY_S = 2.0
#: Errors of a connection that was closed before any response: the request may be sent again.
_STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class BackendError(EngineError):
    """A backend answered in a way the gateway cannot pass on (misconfiguration)."""

    status = 502
    code = "backend_error"


class _BackendDown(Exception):
    """Connection refused, reset or 5xx: take the backend out and try another."""


class _StaleConnection(_BackendDown):
    """The backend closed the connection before answering: worth one more try on a new one."""


@dataclass
class Backend:
    url: str
    healthy: bool = False
    outstanding: int = 0
    model: str | None = None
    last_error: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "model": self.model,
            "last_error": self.last_error,
        }


class RemoteEngine:
    """Least-outstanding-requests balancing over `vllm serve` URLs, with health probes."""

    kind = "remote"

    def __init__(
        self,
        urls: Sequence[str],
        *,
        retry_interval_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
    ) -> None:
        if not urls:
            raise ValueError("the remote engine needs at least one backend URL")
        self.backends = [Backend(url.rstrip("/")) for url in urls]
        self._retry_interval_s = retry_interval_s
        self._timeout = httpx.Timeout(connect_timeout_s, read=read_timeout_s, pool=None)
        self._client: httpx.AsyncClient | None = None
        self._prober: asyncio.Task[None] | None = None
        self._turn = itertools.count()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
            trust_env=False,
        )
        await self.probe()
        if not any(b.healthy for b in self.backends):
            logger.warning(
                "no vLLM backend answers yet; retrying every %gs", self._retry_interval_s
            )
        self._prober = asyncio.create_task(self._probe_forever())

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._client is not None:
            await self._client.aclose()

    async def status(self) -> EngineStatus:
        return EngineStatus(
            any(b.healthy for b in self.backends),
            {
                "kind": self.kind,
                "outstanding": sum(b.outstanding for b in self.backends),
                "backends": [b.describe() for b in self.backends],
            },
        )

    async def probe(self) -> None:
        """Ask every backend for its model list: alive, and which name to send."""
        await asyncio.gather(*(self._probe(b) for b in self.backends))

    async def _probe(self, backend: Backend) -> None:
        assert self._client is not None
        try:
            try:
                response = await self._client.get(f"{backend.url}/v1/models", timeout=5.0)
            except _STALE_CONNECTION:
                response = await self._client.get(f"{backend.url}/v1/models", timeout=5.0)
            response.raise_for_status()
            models = response.json()["data"]
            backend.model = models[0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            if backend.healthy:
                logger.warning("backend %s is down: %s", backend.url, exc)
            backend.healthy = False
            backend.last_error = f"{type(exc).__name__}: {exc}"
            return
        if not backend.healthy:
            logger.info("backend %s is up (model %s)", backend.url, backend.model)
        backend.healthy = True
        backend.last_error = None

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval_s)
            await self.probe()

    def _pick(self, tried: set[str]) -> Backend | None:
        candidates = [b for b in self.backends if b.healthy and b.url not in tried]
        if not candidates:
            return None
        least = min(b.outstanding for b in candidates)
        tied = [b for b in candidates if b.outstanding == least]
        return tied[next(self._turn) % len(tied)]

    def _mark_down(self, backend: Backend, reason: str) -> None:
        logger.warning("taking backend %s out: %s", backend.url, reason)
        backend.healthy = False
        backend.last_error = reason

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineEvent]:
        body = await asyncio.to_thread(_chat_body, request)
        tried: set[str] = set()
        retried: set[str] = set()
        while True:
            backend = self._pick(tried)
            if backend is None:
                raise EngineUnavailable(
                    f"no healthy vLLM backend ({len(self.backends)} configured, "
                    f"{len(tried)} tried for this request)"
                )
            tried.add(backend.url)
            streamed = False
            backend.outstanding += 1
            try:
                async for event in self._stream(backend, body):
                    streamed = True
                    yield event
                return
            except _StaleConnection as exc:  # nothing streamed: no response had started
                if backend.url in retried:
                    self._mark_down(backend, str(exc))
                else:  # once more, on a new connection
                    retried.add(backend.url)
                    tried.discard(backend.url)
            except _BackendDown as exc:
                self._mark_down(backend, str(exc))
                if streamed:
                    raise EngineUnavailable("the vLLM backend failed mid-generation") from None
            finally:
                backend.outstanding -= 1

    async def _stream(self, backend: Backend, body: dict[str, Any]) -> AsyncIterator[EngineEvent]:
        assert self._client is not None
        url = f"{backend.url}/v1/chat/completions"
        answered = False
        try:
            async with self._client.stream(
                "POST", url, json={**body, "model": backend.model}
            ) as response:
                answered = True
                if response.status_code >= 500:
                    raise _BackendDown(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise _refusal(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield _event(json.loads(data))
        except httpx.TransportError as exc:
            stale = not answered and isinstance(exc, _STALE_CONNECTION)
            raise (_StaleConnection if stale else _BackendDown)(
                f"{type(exc).__name__}: {exc}"
            ) from None


def _refusal(status: int, payload: bytes) -> EngineError:
    """A backend's 4xx as the gateway's error: 400s are the client's, others misconfiguration."""
    message = payload.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, AttributeError):
        parsed = json.loads(payload)
        error = parsed.get("error", parsed)
        message = error.get("message", message) if isinstance(error, dict) else str(error)
    if status in (400, 422):
        return EngineBadRequest(message)
    return BackendError(f"the vLLM backend answered HTTP {status}: {message}")


def _event(chunk: dict[str, Any]) -> EngineEvent:
    if "error" in chunk:
        error = chunk["error"]
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
        if code in (400, "400", "BadRequestError"):
            raise EngineBadRequest(message)
        raise BackendError(message)
    deltas = []
    for choice in chunk.get("choices") or ():
        logprobs = None
        content = (choice.get("logprobs") or {}).get("content")
        if content is not None:
            logprobs = tuple(
                TokenLogprob(
                    token=entry["token"],
                    logprob=entry["logprob"],
                    top=tuple(
                        TopLogprob(t["token"], t["logprob"]) for t in entry.get("top_logprobs", ())
                    ),
                )
                for entry in content
            )
        deltas.append(
            ChoiceDelta(
                index=choice["index"],
                text=(choice.get("delta") or {}).get("content") or "",
                logprobs=logprobs,
                finish_reason=choice.get("finish_reason"),
            )
        )
    usage = chunk.get("usage")
    if usage:
        return EngineEvent(tuple(deltas), usage["prompt_tokens"], usage["completion_tokens"])
    return EngineEvent(tuple(deltas))


def _data_url(image: LoadedImage) -> str:
    """The client's own bytes when they decode to exactly the gateway's pixels (its own data: URL
    when it sent one), else a lossless PNG: the backend prunes exactly the pixels the gateway
    measured and localized."""
    source = image.source
    if source is not None and source.data_url is not None:
        return source.data_url
    if source is not None:
        mime, data = source.mime, source.data
    else:
        buffer = io.BytesIO()
        image.pixels().save(buffer, format="PNG", compress_level=1)
        mime, data = "image/png", buffer.getvalue()
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _chat_body(request: EngineRequest) -> dict[str, Any]:
    images = iter(request.images)
    messages = []
    for message in request.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": _data_url(next(images))}}
                if part["type"] == "image"
                else part
                for part in content
            ]
        messages.append({**message, "content": content})
    options = request.sampling
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": options.max_tokens,
        "n": options.n,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if options.seed is not None:
        body["seed"] = options.seed
    if options.stop:
        body["stop"] = list(options.stop)
    if options.top_logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = options.top_logprobs
    if request.mm_kwargs:
        body["mm_processor_kwargs"] = dict(request.mm_kwargs)
    return body
