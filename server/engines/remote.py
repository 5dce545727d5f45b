"""Remote engine: one or more `vllm serve` backends running the CROP plugin, over HTTP.

Backends run with `--trust-request-mm-kwargs` (the CROP plan travels as the top-level
`mm_processor_kwargs` of the chat request) and with the gateway's CROP settings, which the
gateway checks: at startup and in every probe it asks each backend (vLLM's own `/tokenize`) how
many prompt tokens PLC saves on a probe image and whether ILP modes are allowed, and takes a
backend whose answer differs from its own accounting out of rotation until it agrees. Each probe
also reads the backend's KV-cache facts (block size, cache dtype) from vLLM's
`vllm:cache_config_info` metric; a backend that does not export it (`--disable-log-stats`)
serves on, and the KV figures of its answers are left out.

Requests go to the healthy backend with the fewest outstanding requests. A backend that refuses
connections or answers 5xx is taken out and probed again every `retry_interval_s`; the request
moves on to another backend as long as nothing has been streamed to the client yet. A
connection the backend closed as a request arrived (an idle keep-alive connection) is retried
once on a new one before the backend counts as down. Every call streams from the backend, so
closing the client's stream closes the backend connection, and vLLM aborts the request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.decoding import LoadedImage
from server.engines import (
    EngineError,
    EngineRequest,
    EngineStatus,
    EngineUnavailable,
    KvCacheFacts,
    Response,
    ServedModel,
    refusal,
)
from server.engines.vllm_api import replace_images
from server.sse import achunks

logger = logging.getLogger(__name__)

#: Idle pooled connections are dropped after this long: below uvicorn's (so vLLM's) 5 s
#: keep-alive timeout, so the gateway does not send on a connection the backend is closing.
KEEPALIVE_EXPIRY_S = 2.0
PROBE_TIMEOUT_S = 10.0
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


@dataclass(frozen=True)
class CropCheck:
    """What a backend must answer to count as pruning the way the gateway counts.

    PLC with mode `plc` and `region` on the image at `image_url` must save `saved_tokens`
    prompt tokens (the gateway's accounting with its settings and model), and a `plc+ilp`
    request must be accepted exactly when `ilp` is (the gateway's `crop_enable_ilp`).
    """

    image_url: str
    region: tuple[float, float, float, float]
    saved_tokens: int
    ilp: bool


#: Called after each probe of a backend: (url, serving, CROP settings differ).
BackendReport = Callable[[str, bool, bool], None]


@dataclass
class Backend:
    url: str
    healthy: bool = False
    outstanding: int = 0
    model: str | None = None
    root: str | None = None
    max_model_len: int | None = None
    vllm_version: str | None = None
    #: Why the backend's CROP answers differ from the gateway's, while they do.
    mismatch: str | None = None
    last_error: str | None = None
    #: From its `vllm:cache_config_info` (None: it does not export the metric).
    kv_cache: KvCacheFacts | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "outstanding": self.outstanding,
            "model": self.model,
            "vllm_version": self.vllm_version,
            "crop_settings_match": None if self.model is None else self.mismatch is None,
            "kv_cache": None if self.kv_cache is None else asdict(self.kv_cache),
            "last_error": self.last_error,
        }


class RemoteEngine:
    """Least-outstanding-requests balancing over `vllm serve` URLs, with health probes."""

    kind = "remote"

    def __init__(
        self,
        urls: Sequence[str],
        *,
        crop_check: CropCheck | None = None,
        report: BackendReport | None = None,
        retry_interval_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
    ) -> None:
        if not urls:
            raise ValueError("the remote engine needs at least one backend URL")
        self.backends = [Backend(url.rstrip("/")) for url in urls]
        self._crop_check = crop_check
        self._report = report
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
                "no vLLM backend serves yet; probing again every %gs", self._retry_interval_s
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

    async def served_model(self) -> ServedModel:
        serving = [b for b in self.backends if b.healthy] or self.backends
        lengths = [b.max_model_len for b in serving if b.max_model_len is not None]
        root = next((b.root for b in serving if b.root is not None), None)
        return ServedModel(root, min(lengths) if lengths else None)

    def vllm_versions(self) -> list[str]:
        return sorted({b.vllm_version for b in self.backends if b.vllm_version is not None})

    def engine_metrics(self) -> bytes:
        return b""

    async def wait_dead(self) -> None:
        await asyncio.Event().wait()  # backends come and go; the gateway outlives them

    async def probe(self) -> None:
        """Ask every backend what it serves and how it prunes: alive, which name to send,
        and whether its CROP settings agree with the gateway's."""
        await asyncio.gather(*(self._probe(b) for b in self.backends))

    async def _probe(self, backend: Backend) -> None:
        try:
            models = (await self._get(backend, "/v1/models")).json()["data"]
            backend.model, backend.root = models[0]["id"], models[0].get("root")
            backend.max_model_len = models[0].get("max_model_len")
            backend.vllm_version = (await self._get(backend, "/version")).json().get("version")
            kv_cache = await self._read_kv_cache(backend)
            if backend.healthy and kv_cache != backend.kv_cache:
                logger.info("backend %s: %s", backend.url, _kv_cache_note(kv_cache))
            backend.kv_cache = kv_cache
            mismatch = await self._check_crop(backend)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            if backend.healthy:
                logger.warning("backend %s is down: %s", backend.url, exc)
            backend.healthy = False
            backend.last_error = f"{type(exc).__name__}: {exc}"
        else:
            if mismatch is not None:
                if backend.mismatch != mismatch:
                    logger.error(
                        "backend %s is out of rotation: its CROP settings differ from the "
                        "gateway's (%s); start it with the gateway's --crop-* settings",
                        backend.url,
                        mismatch,
                    )
                backend.healthy = False
                backend.last_error = f"CROP settings differ: {mismatch}"
            elif not backend.healthy:
                logger.info(
                    "backend %s serves (model %s; %s)",
                    backend.url,
                    backend.model,
                    _kv_cache_note(backend.kv_cache),
                )
                backend.healthy = True
                backend.last_error = None
            backend.mismatch = mismatch
        if self._report is not None:
            self._report(backend.url, backend.healthy, backend.mismatch is not None)

    async def _get(self, backend: Backend, path: str) -> httpx.Response:
        assert self._client is not None
        url = backend.url + path
        try:
            response = await self._client.get(url, timeout=PROBE_TIMEOUT_S)
        except _STALE_CONNECTION:
            response = await self._client.get(url, timeout=PROBE_TIMEOUT_S)
        return response.raise_for_status()

    async def _read_kv_cache(self, backend: Backend) -> KvCacheFacts | None:
        try:
            metrics = (await self._get(backend, "/metrics")).text
        except httpx.HTTPStatusError:
            return None
        return kv_cache_facts(metrics)

    async def _check_crop(self, backend: Backend) -> str | None:
        """None when the backend prunes as the gateway counts, else what differs."""
        check = self._crop_check
        if check is None:
            return None
        off = await self._tokenize(backend, {"crop_mode": "off"})
        plc = await self._tokenize(
            backend, {"crop_mode": "plc", "crop_regions": [list(check.region)]}
        )
        if off is None or plc is None:
            return (
                "it refuses CROP's mm_processor_kwargs (run it with the CROP architecture and "
                "--trust-request-mm-kwargs)"
            )
        if off - plc != check.saved_tokens:
            return (
                f"PLC on the probe image saves {off - plc} prompt tokens there and "
                f"{check.saved_tokens} here (crop_inside_stride, crop_outside_stride, "
                "crop_drop_outside or the model differ)"
            )
        ilp = await self._tokenize(
            backend, {"crop_mode": "plc+ilp", "crop_regions": [list(check.region)]}
        )
        if (ilp is not None) != check.ilp:
            allows = "allows" if ilp is not None else "refuses"
            return f"it {allows} ILP modes (crop_enable_ilp), the gateway has {check.ilp}"
        return None

    async def _tokenize(self, backend: Backend, crop: dict[str, object]) -> int | None:
        """Prompt tokens of the probe request with these CROP kwargs; None when refused."""
        assert self._client is not None and self._crop_check is not None
        content = [
            {"type": "image_url", "image_url": {"url": self._crop_check.image_url}},
            {"type": "text", "text": "What is in the top left corner?"},
        ]
        body = {
            "model": backend.model,
            "messages": [{"role": "user", "content": content}],
            "mm_processor_kwargs": crop,
        }
        response = await self._client.post(
            backend.url + "/tokenize", json=body, timeout=PROBE_TIMEOUT_S
        )
        if response.status_code == 400:
            return None
        return int(response.raise_for_status().json()["count"])

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
        if self._report is not None:
            self._report(backend.url, False, backend.mismatch is not None)

    async def generate(self, request: EngineRequest) -> AsyncIterator[Response]:
        body = await asyncio.to_thread(_chat_body, request)
        headers = {"X-Request-Id": request.request_id}
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
            request.served_by.kv_cache = backend.kv_cache
            streamed = False
            backend.outstanding += 1
            try:
                async for answer in self._send(backend, {**body, "model": backend.model}, headers):
                    streamed = True
                    yield answer
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

    async def _send(
        self, backend: Backend, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[Response]:
        """vLLM's answer to `body`: its stream's chunks, or its one completion."""
        assert self._client is not None
        url = f"{backend.url}/v1/chat/completions"
        answered = False
        try:
            async with self._client.stream("POST", url, json=body, headers=headers) as response:
                answered = True
                if response.status_code >= 500:
                    raise _BackendDown(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise _refusal(response.status_code, await response.aread())
                if not body.get("stream"):
                    yield json.loads(await response.aread())
                    return
                async for chunk in achunks(response.aiter_lines()):
                    if "error" in chunk:
                        raise _stream_error(chunk["error"])
                    yield chunk
        except httpx.TransportError as exc:
            stale = not answered and isinstance(exc, _STALE_CONNECTION)
            raise (_StaleConnection if stale else _BackendDown)(
                f"{type(exc).__name__}: {exc}"
            ) from None


def cache_config_labels(metrics: str) -> dict[str, str] | None:
    """The labels of `vllm:cache_config_info` in a `vllm serve` `/metrics` text (vLLM's cache
    configuration; None when it exports none)."""
    line = next((s for s in metrics.splitlines() if s.startswith("vllm:cache_config_info{")), None)
    if line is None:
        return None
    try:
        (family,) = text_string_to_metric_families(line + "\n")
        return family.samples[0].labels
    except ValueError:
        return None


def kv_cache_facts(metrics: str) -> KvCacheFacts | None:
    """The KV-cache facts in a `vllm serve` `/metrics` text (None when it has none)."""
    labels = cache_config_labels(metrics)
    try:
        return (
            None
            if labels is None
            else KvCacheFacts(int(labels["block_size"]), labels["cache_dtype"])
        )
    except (KeyError, ValueError):  # not the metric vLLM 0.32 exports: as if it had none
        return None


def _kv_cache_note(facts: KvCacheFacts | None) -> str:
    if facts is None:
        return (
            "it exports no vllm:cache_config_info (--disable-log-stats?), so usage.crop.kv is "
            "null for its answers"
        )
    return f"KV cache of {facts.block_size}-token blocks, cache dtype {facts.cache_dtype}"


def _refusal(status: int, payload: bytes) -> EngineError:
    """A backend's 4xx as the gateway's error: the client's fault, with vLLM's message."""
    message, param = payload.decode("utf-8", "replace"), None
    with contextlib.suppress(ValueError, AttributeError):
        parsed = json.loads(payload)
        error = parsed.get("error", parsed)
        if isinstance(error, dict):
            message, param = error.get("message", message), error.get("param")
        else:
            message = str(error)
    if status in (400, 422):
        return refusal(400, message, param)
    return BackendError(f"the vLLM backend answered HTTP {status}: {message}")


def _stream_error(error: object) -> EngineError:
    if not isinstance(error, dict):
        return BackendError(str(error))
    code = error.get("code")
    status = int(code) if isinstance(code, int) or str(code).isdigit() else 500
    return refusal(status, str(error.get("message", error)), error.get("param"))


def image_data_url(image: LoadedImage) -> str:
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
    """The client's fields as vLLM validated them, with the images as data: URLs, CROP's plan in
    `mm_processor_kwargs` and usage always on in streams."""
    body = request.request.model_dump(mode="json", exclude_unset=True, by_alias=True)
    urls = [image_data_url(image) for image in request.images]
    body["messages"] = replace_images(
        body["messages"], lambda n: {"type": "image_url", "image_url": {"url": urls[n]}}
    )
    stream_options = request.stream_options()
    for key, value in (
        ("mm_processor_kwargs", request.mm_processor_kwargs()),
        (
            "stream_options",
            stream_options and stream_options.model_dump(mode="json", by_alias=True),
        ),
    ):
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    body.pop("request_id", None)  # the X-Request-Id header names the request
    return body
