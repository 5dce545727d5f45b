"""Benchmark the gateway: its overhead over `vllm serve`, and end-to-end CROP against no pruning.

    python loadtest/bench_gateway.py [--arch llava] [--requests 24] [--concurrency 4]

Builds (once, cached) the mid-size random checkpoint (`size="bench"`), starts one `vllm serve`
with the CROP plugin and one `crop-server` in front of it (remote engine, localizer `none`), both
as subprocesses on loopback ports, then measures:

1. CROP: through the gateway, streamed, each image first with `crop.mode = off` and then with a
   client region (the top-left quarter): prompt tokens, time to first token and end-to-end
   latency; then both at `--concurrency` (throughput).
2. The gateway's own cost, against the same `vllm serve`: pairs of requests (each with its own
   fresh 640x480 JPEG, a short question, 8 tokens), one straight to `vllm serve` and one through
   the gateway, in alternating order, one at a time: the added latency is the difference of the
   medians (and the median of the per-pair differences); the gateway's own histogram
   `crop_gateway_overhead_seconds` (time outside the engine call) is read alongside. Then
   throughput at saturation (`--saturation` clients, closed loop), direct and through the
   gateway in alternating blocks.

Every request carries a new image (no processor or prefix cache hits). The weights are random:
answers are gibberish, the costs are those of a real model of this size. Each section has half of
`--budget-s` and stops early once it is spent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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

from crop_vllm.demo import serve_command
from crop_vllm.testing.photos import photo_jpeg
from crop_vllm.testing.servers import free_port, wait_until_healthy

QUARTER = [0.0, 0.0, 0.5, 0.5]
QUESTION = "What is in the top left corner of the picture?"
MAX_TOKENS = 8
SIZES = {"llava": (224, 224), "llava_next": (224, 224), "qwen2_5_vl": (448, 448)}
#: The issue's reference request for the gateway's cost: one 640x480 JPEG.
OVERHEAD_SIZE = (640, 480)


def jpeg_url(seed: int, size: tuple[int, int]) -> str:
    """A fresh photo-like JPEG per seed, as a data URL (what most clients send)."""
    return "data:image/jpeg;base64," + base64.b64encode(photo_jpeg(seed, *size)).decode()


def body(model: str, url: str, **extra: object) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,  # every answer is MAX_TOKENS long, on both paths
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
        url = jpeg_url(next(seeds), size)
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
                client, gateway, body("bench", jpeg_url(next(seeds), size), crop=crop)
            )

        results, wall = await closed_loop(args.requests, args.concurrency, call)
        ttft = p50_p99([r.ttft for r in results if r.ttft is not None])
        row(label, f"{len(results) / wall:.2f}", *ttft, *p50_p99([r.latency for r in results]))


def overhead_histogram(text: str) -> tuple[float, float, list[tuple[float, float]]]:
    """(count, sum, cumulative buckets) of `crop_gateway_overhead_seconds` in a scrape."""
    count = total = 0.0
    buckets = []
    for line in text.splitlines():
        if line.startswith("crop_gateway_overhead_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("crop_gateway_overhead_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("crop_gateway_overhead_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.split()[-1])))
    return count, total, buckets


def bucket_median(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The upper bound of the bucket holding the median of the requests between two scrapes."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    half = counts[-1][1] / 2
    return next(le for le, n in counts if n >= half)


async def overhead_section(
    client: httpx.AsyncClient,
    direct: str,
    gateway: str,
    model: str,
    args: argparse.Namespace,
    seeds: Iterator[int],
    budget_s: float,
) -> None:
    """The gateway's cost against the same vllm serve: fresh images, alternating order; each
    part (concurrency 1, saturation) has half of `budget_s`."""
    budget = Budget(budget_s / 2)
    scraped = (await client.get(gateway + "/metrics")).text
    pairs: list[tuple[float, float]] = []
    for index in range(args.pairs):
        if budget.spent:
            break
        calls = [
            lambda: post(client, direct, body(model, jpeg_url(next(seeds), OVERHEAD_SIZE))),
            lambda: post(client, gateway, body("bench", jpeg_url(next(seeds), OVERHEAD_SIZE))),
        ]
        order = calls if index % 2 == 0 else calls[::-1]
        first, second = [await call() for call in order]
        straight, through = (first, second) if index % 2 == 0 else (second, first)
        pairs.append((straight.latency, through.latency))
    after = (await client.get(gateway + "/metrics")).text
    count0, sum0, buckets0 = overhead_histogram(scraped)
    count1, sum1, buckets1 = overhead_histogram(after)
    direct_ms = [d for d, _ in pairs]
    through_ms = [g for _, g in pairs]
    print(
        f"\n## The gateway's cost: {len(pairs)} pairs, one 640x480 JPEG each, concurrency 1, "
        "alternating order, a fresh image per request"
    )
    row("path", "p50 ms", "p99 ms")
    row("---", "---:", "---:")
    row("vllm serve direct", *p50_p99(direct_ms))
    row("through the gateway", *p50_p99(through_ms))
    print(
        f"\nadded p50 (difference of medians): "
        f"{ms(statistics.median(through_ms) - statistics.median(direct_ms))} ms; "
        f"median of per-pair differences: "
        f"{ms(statistics.median(g - d for d, g in pairs))} ms"
    )
    if count1 > count0:
        print(
            f"server side, crop_gateway_overhead_seconds: mean "
            f"{ms((sum1 - sum0) / (count1 - count0))} ms, median <= "
            f"{ms(bucket_median(buckets0, buckets1))} ms (bucket bound), "
            f"{count1 - count0:.0f} requests"
        )

    print(
        f"\n## Throughput at saturation ({args.saturation} clients, {args.requests} requests "
        f"per block, blocks alternating, {args.blocks} each)"
    )
    budget = Budget(budget_s / 2)
    rates: dict[str, list[float]] = {"vllm serve direct": [], "through the gateway": []}
    targets = [("vllm serve direct", direct, model), ("through the gateway", gateway, "bench")]
    for block in range(args.blocks):
        for label, url, name in targets if block % 2 == 0 else targets[::-1]:
            if budget.spent:
                break

            async def call(_: int, url: str = url, name: str = name) -> Result:
                return await post(client, url, body(name, jpeg_url(next(seeds), OVERHEAD_SIZE)))

            results, wall = await closed_loop(args.requests, args.saturation, call)
            rates[label].append(len(results) / wall)
    row("path", "req/s (median of blocks)", "blocks")
    row("---", "---:", "---:")
    for label, values in rates.items():
        if values:
            row(label, f"{statistics.median(values):.2f}", " ".join(f"{v:.2f}" for v in values))
    if all(rates.values()):
        ratio = statistics.median(rates["through the gateway"]) / statistics.median(
            rates["vllm serve direct"]
        )
        print(f"\nthroughput through the gateway / direct: {ratio:.3f}")


async def run(args: argparse.Namespace, direct: str, gateway: str, model: str) -> None:
    size = SIZES[args.arch]
    seeds = iter(range(1_000_000))
    async with httpx.AsyncClient(timeout=300) as client:
        # Warm both paths (first-request costs are neither overhead nor savings).
        for url, name in ((direct, model), (gateway, "bench")):
            await post(client, url, body(name, jpeg_url(next(seeds), size)))
        if not args.overhead_only:
            await crop_section(client, gateway, args, size, seeds, Budget(args.budget_s / 2))
        await overhead_section(client, direct, gateway, model, args, seeds, args.budget_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="llava", choices=sorted(SIZES))
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=40, help="concurrency-1 pairs")
    parser.add_argument("--saturation", type=int, default=8, help="clients at saturation")
    parser.add_argument("--blocks", type=int, default=4, help="saturation blocks per path")
    parser.add_argument("--overhead-only", action="store_true", help="skip the CROP section")
    parser.add_argument("--budget-s", type=float, default=600.0, help="measurement time limit")
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
        extra = [
            "--dtype", "float32", "--max-num-seqs", "8", "--mm-processor-cache-gb", "0",
            "--enable-prompt-tokens-details",
        ]  # fmt: skip
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
