"""What the benchmarks share: the servers they start (stock `vllm serve`, `vllm serve` with CROP,
the gateway), the chat requests they send and how they time them, the closed loop that drives
them, vLLM's own metrics and percentiles.

The baseline is stock vLLM as `vllm serve MODEL` runs it (vLLM's default configuration, the
plugin not loaded); CROP engines run as README tells users to (`crop_vllm.serve.serve_command`:
vLLM's defaults, the CROP architecture and settings, what the settings require). Both get the
same `machine_args` (dtype, context length: what this machine needs, not tuning).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from crop_vllm.options import CropSettings
from crop_vllm.serve import serve_command, vllm_serve_prefix
from crop_vllm.testing.photos import photo_jpeg
from crop_vllm.testing.servers import free_port, start_server, stop_server, wait_until_healthy
from server.flags import crop_setting_args
from server.sse import achunks

T = TypeVar("T")
QUARTER = [0.0, 0.0, 0.5, 0.5]
#: The benchmarks' questions about the picture, taken in turn.
QUESTIONS = (
    "What color is the umbrella the woman holds?",
    "How many dogs are there?",
    "What is written on the sign?",
    "Is the cup on the left of the laptop?",
)
#: Where the benchmark checkpoints are built (once, cached).
BENCH_CACHE = Path.home() / ".cache" / "crop-serving" / "bench"
#: The served model name of every benchmark server.
SERVED_NAME = "bench"


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def server_env() -> dict[str, str]:
    """The environment of the engine and gateway subprocesses: no downloads, and vLLM's CPU
    backend with 2 GiB of KV cache and unpinned threads (a shared machine), unless set."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
    }


def machine_args(max_model_len: int = 4096) -> list[str]:
    """`vllm serve` arguments every engine of a benchmark gets: float32 (the random
    checkpoints' dtype, which CPUs run) and a context that fits the workload."""
    return ["--dtype", "float32", "--max-model-len", str(max_model_len)]


def stock_command(model: Path, port: int, extra: list[str]) -> list[str]:
    """Stock `vllm serve MODEL` (run it with `stock_env`: the plugin not loaded)."""
    return [*vllm_serve_prefix(model), "--host", "127.0.0.1", "--port", str(port), *extra]


def stock_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "VLLM_PLUGINS": ""}


def crop_command(model: Path, port: int, extra: list[str], settings: CropSettings) -> list[str]:
    """`vllm serve` with CROP as README tells users to run it."""
    return serve_command(model, "127.0.0.1", port, extra, settings)


def gateway_command(
    model: Path, port: int, backend: str, settings: CropSettings, extra: list[str]
) -> list[str]:
    """`crop-server serve` in remote mode in front of `backend`, with its CROP `settings`."""
    return [
        sys.executable, "-m", "server.cli", "serve", "--model", str(model),
        "--served-model-name", SERVED_NAME, "--engine", "remote", "--backend", backend,
        "--port", str(port), "--log-level", "warning", *crop_setting_args(settings), *extra,
    ]  # fmt: skip


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen
    log: Path


class Servers(contextlib.AbstractContextManager):
    """Servers started as subprocesses on loopback ports; all stopped when the block ends."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        self.started: dict[str, Server] = {}

    def start(
        self, name: str, command: Callable[[int], list[str]], env: dict[str, str] | None = None
    ) -> Server:
        """`command(port)` running (its output in `logs`/NAME.log)."""
        port = free_port()
        log = self.logs / f"{name}.log"
        process = start_server(command(port), log, env or self.env)
        self.started[name] = Server(name, f"http://127.0.0.1:{port}", process, log)
        return self.started[name]

    def wait_healthy(self, timeout: float) -> None:
        """Until every server started answers on /health (the servers start side by side)."""
        deadline = time.monotonic() + timeout
        for server in self.started.values():
            remaining = max(deadline - time.monotonic(), 1.0)
            wait_until_healthy(server.url, server.process, server.log, remaining)

    def __exit__(self, *exc: object) -> None:
        for server in self.started.values():
            stop_server(server.process)


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def jpeg_url(seed: int, width: int, height: int) -> str:
    """A fresh photo-like JPEG per seed, as a data URL (what most clients send)."""
    return "data:image/jpeg;base64," + base64.b64encode(photo_jpeg(seed, width, height)).decode()


def image_chat(image_url: str, question: str, max_tokens: int, **fields: Any) -> dict[str, Any]:
    """A one-turn chat request, the image then the question: greedy, exactly `max_tokens`
    output tokens (`ignore_eos`: every configuration decodes alike); `fields` on top (`model`,
    `crop`, `mm_processor_kwargs`, ...)."""
    content = [
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "text", "text": question},
    ]
    return {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        **fields,
    }


class RequestFailed(RuntimeError):
    """A benchmark request got an error answer."""


@dataclass
class Sample:
    """One chat request as its client saw it."""

    latency_s: float
    #: To the first chunk with generated text (streamed requests; None otherwise).
    ttft_s: float | None
    prompt_tokens: int
    completion_tokens: int
    #: `usage.crop` of gateway answers.
    crop: dict[str, Any] | None = None


def _sample(started: float, ttft: float | None, usage: dict[str, Any] | None) -> Sample:
    if usage is None:
        raise RequestFailed("the answer has no usage")
    return Sample(
        time.perf_counter() - started,
        ttft,
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage.get("crop"),
    )


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    """Stream one chat completion from `url` (with the usage chunk)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    ttft, usage = None, None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            text = (await response.aread())[:300]
            raise RequestFailed(f"HTTP {response.status_code}: {text!r}")
        async for chunk in achunks(response.aiter_lines()):
            if "error" in chunk:
                raise RequestFailed(f"error event: {chunk['error']}")
            if ttft is None and any(
                c["delta"].get("content") or c["delta"].get("reasoning")
                for c in chunk.get("choices") or ()
            ):
                ttft = time.perf_counter() - started
            usage = chunk.get("usage") or usage
    return _sample(started, ttft, usage)


async def post_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Sample:
    """One whole chat completion from `url`."""
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=body)
    if response.status_code != 200:
        raise RequestFailed(f"HTTP {response.status_code}: {response.text[:300]!r}")
    return _sample(started, None, response.json().get("usage"))


# --------------------------------------------------------------------------------------------
# Driving and measuring
# --------------------------------------------------------------------------------------------


async def closed_loop(
    count: int, concurrency: int, call: Callable[[int], Awaitable[T]]
) -> tuple[list[T], float]:
    """`call(0)` ... `call(count - 1)` by `concurrency` clients, each starting its next call
    when the last one ends: the results (in the order they ended) and the wall time."""
    indices = iter(range(count))
    results: list[T] = []

    async def client() -> None:
        for index in indices:  # shared: each index is taken once
            results.append(await call(index))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0-100), interpolated between ranks (numpy's default)."""
    return float(np.percentile(values, q))


def metric_totals(metrics: str) -> dict[str, float]:
    """A `/metrics` text: every sample's value by name, summed over labels (a histogram's
    `_sum` and `_count` included)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """`metric_totals` of a server's `/metrics` now."""
    return metric_totals((await client.get(url + "/metrics")).text)


def histogram_mean(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """Mean of the observations of histogram `name` between two scrapes (nan when none)."""
    count = after.get(name + "_count", 0.0) - before.get(name + "_count", 0.0)
    total = after.get(name + "_sum", 0.0) - before.get(name + "_sum", 0.0)
    return total / count if count else float("nan")


#: vLLM's per-request histograms of the phases of a request in the engine: waiting, prefill
#: (scheduled to first token, the vision encoder included) and decode (first to last token).
ENGINE_PHASES = {
    "queue_s": "vllm:request_queue_time_seconds",
    "prefill_s": "vllm:request_prefill_time_seconds",
    "decode_s": "vllm:request_decode_time_seconds",
}


def engine_phases(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean seconds per phase of the requests an engine finished between two scrapes."""
    return {key: histogram_mean(before, after, name) for key, name in ENGINE_PHASES.items()}


def fixed_share(latency_s: float, phases: dict[str, float]) -> float:
    """The share of a request's latency that visual-token pruning does not shrink: decoding,
    and the time outside the engine (preprocessing, HTTP, a gateway). A lower bound: the
    vision encoder runs inside the prefill."""
    outside = latency_s - phases["queue_s"] - phases["prefill_s"] - phases["decode_s"]
    return (phases["decode_s"] + max(outside, 0.0)) / latency_s


def machine() -> str:
    """The machine a benchmark ran on, and how busy it was (other work skews every number)."""
    import platform

    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU cores, {name}, 1-min load average {os.getloadavg()[0]:.1f}"
