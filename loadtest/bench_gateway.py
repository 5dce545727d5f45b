"""Benchmark the gateway: its overhead over `vllm serve`, and end-to-end CROP against no pruning.

    python -m loadtest.bench_gateway [--arch llava] [--requests 16] [--concurrency 4]

Builds (once, cached) the mid-size random checkpoint (`size="bench"`), starts one `vllm serve`
with CROP as README tells users to run it (vLLM's defaults, the CROP architecture and settings)
and one `crop-server` in front of it (remote engine, localizer `none`), both as subprocesses on
loopback ports, then measures:

1. CROP: through the gateway, streamed, each image first with `crop.mode = off` and then with a
   client region (the top-left quarter), one at a time: prompt tokens, time to first token and
   latency, with PLC's ideal (the prompt-token ratio) next to the measured ratio, and where the
   time goes (vLLM's own queue / prefill / decode histograms, read around each request; the
   rest is outside the engine), so the share pruning cannot shrink shows; then both at
   `--concurrency` (throughput).
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
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx

from crop_vllm.options import CropSettings
from loadtest.common import (
    BENCH_CACHE,
    QUARTER,
    SERVED_NAME,
    Sample,
    Servers,
    closed_loop,
    crop_command,
    engine_phases,
    fixed_share,
    gateway_command,
    histogram_mean,
    image_chat,
    jpeg_url,
    machine,
    machine_args,
    metric_totals,
    percentile,
    post_chat,
    scrape,
    server_env,
    stream_chat,
)

QUESTION = "What is in the top left corner of the picture?"
MAX_TOKENS = 8
SIZES = {"llava": (224, 224), "llava_next": (224, 224), "qwen2_5_vl": (448, 448)}
#: The issue's reference request for the gateway's cost: one 640x480 JPEG.
OVERHEAD_SIZE = (640, 480)
#: The engine's CROP settings: the plugin's defaults (this benchmark prunes with PLC).
SETTINGS = CropSettings()


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def p50_p99(values: list[float]) -> tuple[str, str]:
    return ms(percentile(values, 50)), ms(percentile(values, 99))


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


async def with_phases(
    client: httpx.AsyncClient, engine: str, send: Callable[[], Awaitable[Sample]]
) -> tuple[Sample, dict[str, float]]:
    """One request alone, with the engine's phases of it (its histograms around it)."""
    before = await scrape(client, engine)
    sample = await send()
    return sample, engine_phases(before, await scrape(client, engine))


async def crop_section(
    client: httpx.AsyncClient,
    urls: dict[str, str],
    args: argparse.Namespace,
    seeds: Iterator[int],
    budget: Budget,
) -> None:
    """CROP vs off: paired on the same image one at a time, then closed loops under load."""
    size = SIZES[args.arch]
    modes = {"off": {"mode": "off"}, "plc, quarter region": {"regions": [QUARTER]}}
    measured: dict[str, list[tuple[Sample, dict[str, float]]]] = {label: [] for label in modes}
    for _ in range(args.requests):
        if budget.spent:
            break
        url = jpeg_url(next(seeds), *size)
        for label, crop in modes.items():
            body = image_chat(url, QUESTION, MAX_TOKENS, crop=crop)
            measured[label].append(
                await with_phases(
                    client,
                    urls["vllm"],
                    lambda body=body: stream_chat(client, urls["gateway"], body),
                )
            )
    pairs = len(measured["off"])
    print(f"\n## CROP through the gateway: {pairs} images, each off then pruned, streamed")
    row("crop", "prompt tokens", "TTFT p50 ms", "TTFT p99 ms", "e2e p50 ms", "e2e p99 ms")
    row("---", "---:", "---:", "---:", "---:", "---:")
    for label, results in measured.items():
        samples = [sample for sample, _ in results]
        tokens = statistics.mean(s.prompt_tokens for s in samples)
        ttft = p50_p99([s.ttft_s for s in samples if s.ttft_s is not None])
        row(label, f"{tokens:.0f}", *ttft, *p50_p99([s.latency_s for s in samples]))
    off, plc = ([s for s, _ in measured[label]] for label in modes)
    ideal = statistics.mean(
        o.prompt_tokens / p.prompt_tokens for o, p in zip(off, plc, strict=True)
    )
    ratio = [o.ttft_s / p.ttft_s for o, p in zip(off, plc, strict=True) if o.ttft_s and p.ttft_s]
    print(
        f"\nTTFT off / pruned, per image: median {statistics.median(ratio):.2f}x; ideal (PLC "
        f"prunes every layer: prompt tokens off / pruned) {ideal:.2f}x"
    )

    print("\nWhere a request's time goes, one at a time (ms, means; outside: the gateway, HTTP,")
    print("preprocessing; queue, prefill and decode: vLLM's own histograms)")
    row("crop", "latency", "outside", "queue", "prefill", "decode", "pruning cannot shrink")
    row("---", "---:", "---:", "---:", "---:", "---:", "---:")
    for label, results in measured.items():
        latency = statistics.mean(s.latency_s for s, _ in results)
        phases = {k: statistics.mean(p[k] for _, p in results) for k in results[0][1]}
        outside = latency - sum(phases.values())
        row(
            label, ms(latency), ms(outside), ms(phases["queue_s"]), ms(phases["prefill_s"]),
            ms(phases["decode_s"]), f"{fixed_share(latency, phases):.0%} or more",
        )  # fmt: skip

    print(f"\n## CROP under load (concurrency {args.concurrency}, {args.requests} requests each)")
    row("crop", "req/s", "TTFT p50 ms", "TTFT p99 ms", "e2e p50 ms", "e2e p99 ms")
    row("---", "---:", "---:", "---:", "---:", "---:")
    rates = {}
    for label, crop in modes.items():
        if budget.spent:
            print("(budget spent; stopping this section)")
            return

        async def call(_: int, crop: dict = crop) -> Sample:
            body = image_chat(jpeg_url(next(seeds), *size), QUESTION, MAX_TOKENS, crop=crop)
            return await stream_chat(client, urls["gateway"], body)

        samples, wall = await closed_loop(args.requests, args.concurrency, call)
        rates[label] = len(samples) / wall
        ttft = p50_p99([s.ttft_s for s in samples if s.ttft_s is not None])
        row(label, f"{rates[label]:.2f}", *ttft, *p50_p99([s.latency_s for s in samples]))
    measured_ratio = rates["plc, quarter region"] / rates["off"]
    print(f"\nthroughput pruned / off: {measured_ratio:.2f}x; ideal {ideal:.2f}x")


def overhead_buckets(metrics: str) -> list[tuple[float, float]]:
    """The cumulative buckets of `crop_gateway_overhead_seconds` in a `/metrics` text."""
    buckets = []
    for line in metrics.splitlines():
        if line.startswith("crop_gateway_overhead_seconds_bucket"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(bound), float(line.split()[-1])))
    return buckets


def bucket_median(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The upper bound of the bucket holding the median of the requests between two scrapes."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    half = counts[-1][1] / 2
    return next(le for le, n in counts if n >= half)


async def overhead_section(
    client: httpx.AsyncClient,
    urls: dict[str, str],
    model: str,
    args: argparse.Namespace,
    seeds: Iterator[int],
    budget_s: float,
) -> None:
    """The gateway's cost against the same vllm serve: fresh images, alternating order; each
    part (concurrency 1, saturation) has half of `budget_s`."""
    direct, gateway = urls["vllm"], urls["gateway"]

    def body(name: str) -> dict:
        url = jpeg_url(next(seeds), *OVERHEAD_SIZE)
        return image_chat(url, QUESTION, MAX_TOKENS, model=name)

    budget = Budget(budget_s / 2)
    before = (await client.get(gateway + "/metrics")).text
    pairs: list[tuple[float, float]] = []
    for index in range(args.pairs):
        if budget.spent:
            break
        calls = [
            lambda: post_chat(client, direct, body(model)),
            lambda: post_chat(client, gateway, body(SERVED_NAME)),
        ]
        order = calls if index % 2 == 0 else calls[::-1]
        first, second = [await call() for call in order]
        straight, through = (first, second) if index % 2 == 0 else (second, first)
        pairs.append((straight.latency_s, through.latency_s))
    after = (await client.get(gateway + "/metrics")).text
    direct_s = [d for d, _ in pairs]
    through_s = [g for _, g in pairs]
    print(
        f"\n## The gateway's cost: {len(pairs)} pairs, one 640x480 JPEG each, concurrency 1, "
        "alternating order, a fresh image per request"
    )
    row("path", "p50 ms", "p99 ms")
    row("---", "---:", "---:")
    row("vllm serve direct", *p50_p99(direct_s))
    row("through the gateway", *p50_p99(through_s))
    print(
        f"\nadded p50 (difference of medians): "
        f"{ms(statistics.median(through_s) - statistics.median(direct_s))} ms; "
        f"median of per-pair differences: "
        f"{ms(statistics.median(g - d for d, g in pairs))} ms"
    )
    name = "crop_gateway_overhead_seconds"
    totals = metric_totals(before), metric_totals(after)
    served = totals[1].get(name + "_count", 0) - totals[0].get(name + "_count", 0)
    if served:
        print(
            f"server side, {name}: mean {ms(histogram_mean(*totals, name))} ms, median <= "
            f"{ms(bucket_median(overhead_buckets(before), overhead_buckets(after)))} ms "
            f"(bucket bound), {served:.0f} requests"
        )

    print(
        f"\n## Throughput at saturation ({args.saturation} clients, {args.requests} requests "
        f"per block, blocks alternating, {args.blocks} each)"
    )
    budget = Budget(budget_s / 2)
    rates: dict[str, list[float]] = {"vllm serve direct": [], "through the gateway": []}
    targets = [("vllm serve direct", direct, model), ("through the gateway", gateway, SERVED_NAME)]
    for block in range(args.blocks):
        for label, url, name in targets if block % 2 == 0 else targets[::-1]:
            if budget.spent:
                break

            async def call(_: int, url: str = url, name: str = name) -> Sample:
                return await post_chat(client, url, body(name))

            samples, wall = await closed_loop(args.requests, args.saturation, call)
            rates[label].append(len(samples) / wall)
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


async def run(args: argparse.Namespace, urls: dict[str, str], model: str) -> None:
    seeds = iter(range(1_000_000))
    async with httpx.AsyncClient(timeout=300) as client:
        # Warm both paths (first-request costs are neither overhead nor savings).
        for url, name in ((urls["vllm"], model), (urls["gateway"], SERVED_NAME)):
            picture = jpeg_url(next(seeds), *SIZES[args.arch])
            await post_chat(client, url, image_chat(picture, QUESTION, MAX_TOKENS, model=name))
        if not args.overhead_only:
            await crop_section(client, urls, args, seeds, Budget(args.budget_s / 2))
        await overhead_section(client, urls, model, args, seeds, args.budget_s)


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
    parser.add_argument("--cache", type=Path, default=BENCH_CACHE)
    parser.add_argument("--logs", type=Path, default=Path("artifacts") / "bench_gateway")
    args = parser.parse_args()

    from crop_vllm.testing.tiny_models import build_tiny_model

    checkpoint = build_tiny_model(args.arch, args.cache / f"{args.arch}-bench", size="bench")
    args.logs.mkdir(parents=True, exist_ok=True)
    with Servers(args.logs, server_env()) as servers:
        engine = [*machine_args(), "--enable-prompt-tokens-details"]
        vllm = servers.start("vllm", lambda p: crop_command(checkpoint, p, engine, SETTINGS))
        gateway = servers.start(
            "gateway",
            lambda p: gateway_command(checkpoint, p, vllm.url, SETTINGS, ["--localizer", "none"]),
        )
        servers.wait_healthy(900)
        print(f"# bench_gateway: {args.arch} bench checkpoint; {machine()}")
        asyncio.run(run(args, {"vllm": vllm.url, "gateway": gateway.url}, str(checkpoint)))


if __name__ == "__main__":
    main()
