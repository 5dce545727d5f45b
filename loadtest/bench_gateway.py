"""Benchmark the gateway: its overhead over `vllm serve`, and end-to-end CROP against no pruning.

    python loadtest/bench_gateway.py [--arch llava] [--requests 24] [--concurrency 4]

Builds (once, cached) the mid-size random checkpoint (`size="bench"`), starts one `vllm serve`
with the CROP plugin and one `crop-server` in front of it (remote engine, localizer `none`), both
as subprocesses on loopback ports, then measures:

1. CROP: through the gateway, streamed, each image first with `crop.mode = off` and then with a
   client region (the top-left quarter): prompt tokens, time to first token and end-to-end
   latency; then both at `--concurrency` (throughput).
2. Overhead: the same request (one fresh image, a short question, 8 greedy tokens) sent straight
   to `vllm serve` and then through the gateway, back to back, one at a time; the added latency
   is the per-pair difference (p50/p99). Then the same workload at `--concurrency` both ways.

Every request carries a new image (no processor or prefix cache hits). The weights are random:
answers are gibberish, the costs are those of a real model of this size. Each section has half of
`--budget-s` and stops early once it is spent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from crop_vllm.demo import serve_command
from crop_vllm.testing.servers import free_port, wait_until_healthy

QUARTER = [0.0, 0.0, 0.5, 0.5]
QUESTION = "What is in the top left corner of the picture?"
MAX_TOKENS = 8
SIZES = {"llava": (224, 224), "llava_next": (224, 224), "qwen2_5_vl": (448, 448)}


def image_url(seed: int, size: tuple[int, int]) -> str:
    """A fresh, structured image per request (gradients plus blocks), as a PNG data URL."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 32), rng.integers(0, height - 32)
        pixels[y0 : y0 + rng.integers(8, 64), x0 : x0 + rng.integers(8, 64)] = rng.integers(
            0, 255, 3
        )
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def body(model: str, url: str, **extra: object) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        **extra,
    }


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


@dataclass
class Result:
    latency: float
    ttft: float | None = None
    prompt_tokens: int = 0


async def post(client: httpx.AsyncClient, url: str, payload: dict) -> Result:
    started = time.perf_counter()
    response = await client.post(url + "/v1/chat/completions", json=payload)
    response.raise_for_status()
    return Result(time.perf_counter() - started, None, response.json()["usage"]["prompt_tokens"])


async def stream(client: httpx.AsyncClient, url: str, payload: dict) -> Result:
    payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    ttft, prompt_tokens = None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=payload) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if ttft is None and any(c["delta"].get("content") for c in chunk["choices"]):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"]["prompt_tokens"]
    return Result(time.perf_counter() - started, ttft, prompt_tokens)


async def closed_loop(
    count: int, concurrency: int, call: Callable[[int], Awaitable[Result]]
) -> tuple[list[Result], float]:
    """`count` calls by `concurrency` workers; returns the results and the wall time."""
    queue = list(range(count))
    results: list[Result] = []

    async def worker() -> None:
        while queue:
            results.append(await call(queue.pop()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def p50_p99(values: list[float]) -> tuple[str, str]:
    return ms(pct(values, 50)), ms(pct(values, 99))


def row(*cells: object) -> None:
    """One line of a Markdown table."""
    print("| " + " | ".join(str(c) for c in cells) + " |")


class Budget:
    """Stops a benchmark section from starting once the time budget is spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    @property
    def spent(self) -> bool:
        return time.monotonic() > self.deadline


async def crop_section(
    client: httpx.AsyncClient,
    gateway: str,
    args: argparse.Namespace,
    size: tuple[int, int],
    seeds: Iterator[int],
    budget: Budget,
) -> None:
    """CROP vs off: paired on the same image one at a time, then closed loops under load."""
    off, plc = {"mode": "off"}, {"regions": [QUARTER]}
    pairs: list[tuple[Result, Result]] = []
    for _ in range(args.requests):
        if budget.spent:
            break
        url = image_url(next(seeds), size)
        pairs.append(
            (
                await stream(client, gateway, body("bench", url, crop=off)),
                await stream(client, gateway, body("bench", url, crop=plc)),
            )
        )
    print(f"\n## CROP through the gateway: {len(pairs)} images, each off then pruned, streamed")
    row("crop", "prompt tokens", "TTFT p50 ms", "TTFT p99 ms", "e2e p50 ms", "e2e p99 ms")
    row("---", "---:", "---:", "---:", "---:", "---:")
    for label, index in (("off", 0), ("plc, quarter region", 1)):
        results = [pair[index] for pair in pairs]
        tokens = statistics.mean(r.prompt_tokens for r in results)
        ttft = p50_p99([r.ttft for r in results if r.ttft is not None])
        row(label, f"{tokens:.0f}", *ttft, *p50_p99([r.latency for r in results]))
    ratio = [p.ttft / o.ttft for o, p in pairs if o.ttft and p.ttft]
    print(f"\nTTFT pruned / off, per image: median {statistics.median(ratio):.2f}")

    print(f"\n## CROP under load (concurrency {args.concurrency}, {args.requests} requests each)")
    row("crop", "req/s", "TTFT p50 ms", "TTFT p99 ms", "e2e p50 ms", "e2e p99 ms")
    row("---", "---:", "---:", "---:", "---:", "---:")
    for label, crop in (("off", off), ("plc, quarter region", plc)):
        if budget.spent:
            print("(budget spent; stopping this section)")
            return

        async def call(_: int, crop: dict = crop) -> Result:
            return await stream(
                client, gateway, body("bench", image_url(next(seeds), size), crop=crop)
            )

        results, wall = await closed_loop(args.requests, args.concurrency, call)
        ttft = p50_p99([r.ttft for r in results if r.ttft is not None])
        row(label, f"{len(results) / wall:.2f}", *ttft, *p50_p99([r.latency for r in results]))


async def overhead_section(
    client: httpx.AsyncClient,
    direct: str,
    gateway: str,
    model: str,
    args: argparse.Namespace,
    size: tuple[int, int],
    seeds: Iterator[int],
    budget: Budget,
) -> None:
    """The same request straight to vllm serve and through the gateway (localizer none)."""
    pairs = []
    for _ in range(args.requests):
        if budget.spent:
            break
        url = image_url(next(seeds), size)
        straight = await post(client, direct, body(model, url))
        through = await post(client, gateway, body("bench", url, crop={"mode": "off"}))
        pairs.append((straight.latency, through.latency))
    print(f"\n## Gateway overhead: {len(pairs)} images, each direct then through the gateway")
    row("path", "p50 ms", "p99 ms")
    row("---", "---:", "---:")
    row("vllm serve direct", *p50_p99([d for d, _ in pairs]))
    row("through the gateway", *p50_p99([g for _, g in pairs]))
    row("added (per pair)", *p50_p99([g - d for d, g in pairs]))

    print(f"\n## Overhead under load (concurrency {args.concurrency}, {args.requests} requests)")
    row("path", "req/s", "p50 ms", "p99 ms")
    row("---", "---:", "---:", "---:")
    for label, url, name, extra in (
        ("vllm serve direct", direct, model, {}),
        ("through the gateway", gateway, "bench", {"crop": {"mode": "off"}}),
    ):
        if budget.spent:
            print("(budget spent; stopping this section)")
            return

        async def call(_: int, url: str = url, name: str = name, extra: dict = extra) -> Result:
            return await post(client, url, body(name, image_url(next(seeds), size), **extra))

        results, wall = await closed_loop(args.requests, args.concurrency, call)
        row(label, f"{len(results) / wall:.2f}", *p50_p99([r.latency for r in results]))


async def run(args: argparse.Namespace, direct: str, gateway: str, model: str) -> None:
    size = SIZES[args.arch]
    seeds = iter(range(1_000_000))
    async with httpx.AsyncClient(timeout=300) as client:
        # Warm both paths (first-request costs are neither overhead nor savings).
        for url, name in ((direct, model), (gateway, "bench")):
            await post(client, url, body(name, image_url(next(seeds), size)))
        await crop_section(client, gateway, args, size, seeds, Budget(args.budget_s / 2))
        await overhead_section(
            client, direct, gateway, model, args, size, seeds, Budget(args.budget_s / 2)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="llava", choices=sorted(SIZES))
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=240.0, help="measurement time limit")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/crop-serving/bench")
    args = parser.parse_args()

    from crop_vllm.testing.tiny_models import build_tiny_model

    checkpoint = build_tiny_model(args.arch, args.cache / f"{args.arch}-bench", size="bench")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
    }
    vllm_port, gateway_port = free_port(), free_port()
    direct, gateway = f"http://127.0.0.1:{vllm_port}", f"http://127.0.0.1:{gateway_port}"
    bin_dir = Path(sys.executable).parent
    with ExitStack() as stack, tempfile.TemporaryDirectory() as logs:
        vllm_log, gateway_log = Path(logs) / "vllm.log", Path(logs) / "gateway.log"
        extra = ["--dtype", "float32", "--max-num-seqs", "8", "--mm-processor-cache-gb", "0"]
        vllm = start(serve_command(checkpoint, "127.0.0.1", vllm_port, extra), vllm_log, env)
        stack.callback(stop, vllm)
        wait_until_healthy(direct, vllm, vllm_log, timeout=900)
        crop_server = start(
            [
                str(bin_dir / "crop-server"), "serve", "--model", str(checkpoint),
                "--served-model-name", "bench", "--engine", "remote", "--backend", direct,
                "--localizer", "none", "--port", str(gateway_port), "--log-level", "warning",
            ],
            gateway_log,
            env,
        )  # fmt: skip
        stack.callback(stop, crop_server)
        wait_until_healthy(gateway, crop_server, gateway_log, timeout=900)
        print(f"# bench_gateway: {args.arch} bench checkpoint, {platform.machine()}, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        asyncio.run(run(args, direct, gateway, str(checkpoint)))


if __name__ == "__main__":
    main()
