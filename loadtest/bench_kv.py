"""KV-bound serving benchmark: how many requests fit, and what that does to throughput.

    python -m loadtest.bench_kv [--arch llava] [--clients 16] [--json OUT] [--short]

Production GPUs are bound by KV-cache memory: the requests that fit decide throughput. This
reproduces that regime on one machine: the KV cache is sized (`--fit`, default 4) so that stock
vLLM holds about four requests of the workload, and the same bytes are given to every row. Each
row is a real `vllm serve` process on the `bench` checkpoint, driven by `--clients` concurrent
streaming clients (closed loop, fresh images, a quarter-image client region, `--output` tokens
each), then by one client. The rows' servers run side by side and are measured one at a time, in
rounds of alternating order (`--rounds` at `--clients`; at one client, each request is a round),
after unmeasured warm-up requests:

- stock: stock vLLM with its default configuration (what `vllm serve MODEL` does);
- PLC; ILP without the KV saving (`crop_ilp_compact_kv=false`); ILP; PLC+ILP: the CROP
  architecture, with the engine settings README tells users to run (`CropSettings`).

Printed per row: requests running at once (vLLM's own `vllm:num_requests_running`, sampled),
preemptions (`vllm:num_preemptions`), KV per request (layer-blocks of the request's final token
count, as the gateway reports them in `usage.crop.kv`: the allocator's own arithmetic,
`crop_vllm.ilp.plan.kv_blocks`, checked against vLLM's allocator in the tests) relative to stock,
throughput (requests/s) and TTFT p50/p99, each with its ratio to the stock row measured in the
same run, and the median inter-token latency (the decode step at the batch the row runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch

from crop_vllm.families import MODEL_TYPES, family
from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings
from loadtest.common import (
    BENCH_CACHE,
    QUARTER,
    QUESTIONS,
    Sample,
    Servers,
    closed_loop,
    crop_command,
    image_chat,
    jpeg_url,
    machine_args,
    percentile,
    scrape,
    server_env,
    stock_command,
    stock_env,
    stream_chat,
)
from server.accounting import ModelGeometry
from server.engines import KvCacheFacts
from server.engines.remote import cache_config_labels

#: name -> (CROP mode of the requests or None for stock, CROP settings of the engine)
ROWS: dict[str, tuple[str | None, dict[str, object]]] = {
    "stock": (None, {}),
    "PLC": ("plc", {}),
    "ILP, no KV saving": ("ilp", {"enable_ilp": True, "ilp_compact_kv": False}),
    "ILP": ("ilp", {"enable_ilp": True}),
    "PLC+ILP": ("plc+ilp", {"enable_ilp": True}),
}
#: The benchmark runs float32 (`machine_args`).
FLOAT32 = "float32"


@dataclass
class RowResult:
    name: str
    clients: int
    requests: int
    seconds: float
    running_mean: float
    running_max: float
    preemptions: float
    kv_layer_blocks_per_request: float
    ttft_p50: float
    ttft_p99: float
    #: Median time between a request's streamed tokens: the decode step at this row's batch.
    itl_p50: float
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="llava", choices=MODEL_TYPES)
    parser.add_argument("--size", default="bench", choices=["bench", "bench-1024"])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="per row and round at --clients")
    parser.add_argument("--single-requests", type=int, default=8, help="per row at 1 client")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured requests per row")
    parser.add_argument(
        "--rounds", type=int, default=2, help="measured windows per row, in alternating order"
    )
    parser.add_argument("--output", type=int, default=64, help="output tokens per request")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--fit", type=float, default=4.0, help="stock requests the KV cache fits")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument(
        "--max-model-len", type=int, default=1024, help="at most what the KV cache holds"
    )
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--short", action="store_true", help="a quick run (gpu-check)")
    parser.add_argument("--cache", type=Path, default=BENCH_CACHE)
    args = parser.parse_args(argv)
    if args.short:
        args.requests, args.single_requests, args.output, args.rounds = 24, 2, 32, 1
    return args


class Row:
    """One row's engine: its CROP settings on the checkpoint, and what its requests hold."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path, name: str) -> None:
        self.name, (self.mode, settings) = name, ROWS[name]
        self.settings = CropSettings(**settings)  # type: ignore[arg-type]
        self.geometry = ModelGeometry.load(
            str(checkpoint), self.settings, family(args.arch).remote_code
        )
        self.kv_cache = KvCacheFacts(args.block_size, "auto", FLOAT32)
        size = args.image_size
        tokens = self.geometry.image_tokens(
            size, size, Region(*QUARTER), CropMode(self.mode or "off")
        )
        self.dropped = tokens.after_plc - tokens.after_ilp

    def layer_blocks(self, sample: Sample) -> int:
        """Layer-blocks the request held at its end, as `usage.crop.kv` reports them."""
        tokens = sample.prompt_tokens + sample.completion_tokens
        return self.geometry.kv_usage(tokens, self.dropped, self.kv_cache).layer_blocks_with_saving

    def command(self, args: argparse.Namespace, checkpoint: Path, port: int, kv_bytes: int):
        engine = [
            *machine_args(args.max_model_len), "--block-size", str(args.block_size),
            "--kv-cache-memory-bytes", str(kv_bytes), "--max-num-seqs", str(args.clients),
            "--mm-processor-cache-gb", "0",  # fresh images anyway; keeps every row alike
        ]  # fmt: skip
        if torch.cuda.is_available():
            # The rows share one GPU. With --kv-cache-memory-bytes the utilization only sets
            # the free memory vLLM demands at startup, which the default 0.9 would deny to all
            # but the first few servers.
            engine += ["--gpu-memory-utilization", "0.15"]
        if self.mode is None:
            return stock_command(checkpoint, port, engine)
        return crop_command(checkpoint, port, engine, self.settings)


def kv_cache_bytes(args: argparse.Namespace, geometry: ModelGeometry, tokens: int) -> int:
    """Bytes that hold `--fit` stock requests of `tokens` tokens, plus the block vLLM keeps for
    itself."""
    shape = geometry.kv_shape
    blocks = math.ceil(math.ceil(tokens / args.block_size) * args.fit) + 1
    return blocks * shape.num_layers * shape.layer_block_bytes(args.block_size, 4)  # float32


@dataclass
class Window:
    """One measured stretch of a row: its requests, and vLLM's gauges sampled meanwhile."""

    samples: list[Sample]
    seconds: float
    running: list[float]
    preemptions: float


async def drive(url: str, bodies: list[dict], clients: int) -> Window:
    """Closed-loop streaming clients over `bodies`, sampling vLLM's gauges while they run."""
    running: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(timeout=600) as client:
        before = await scrape(client, url)

        async def watch() -> None:
            while not done.is_set():
                running.append((await scrape(client, url)).get("vllm:num_requests_running", 0.0))
                await asyncio.sleep(0.2)

        async def call(index: int) -> Sample:
            return await stream_chat(client, url, bodies[index])

        watcher = asyncio.create_task(watch())
        samples, seconds = await closed_loop(len(bodies), clients, call)
        done.set()
        await watcher
        after = await scrape(client, url)
    preemptions = "vllm:num_preemptions_total"
    return Window(
        samples, seconds, running, after.get(preemptions, 0.0) - before.get(preemptions, 0.0)
    )


def chat_bodies(args, model: str, seed: int, count: int, mode: str | None) -> list[dict]:
    size = args.image_size
    crop = {} if mode is None else {"crop_mode": mode, "crop_regions": [QUARTER]}
    return [
        image_chat(
            jpeg_url(seed + index, size, size),
            QUESTIONS[index % len(QUESTIONS)],
            args.output,
            model=model,
            **({"mm_processor_kwargs": crop} if crop else {}),
        )
        for index in range(count)
    ]


def engine_kv_blocks(url: str) -> str:
    """The engine's KV cache size in blocks, as its `vllm:cache_config_info` says (a block holds
    every layer's KV of `--block-size` tokens; with ILP's KV saving, the groups share them)."""
    labels = cache_config_labels(httpx.get(url + "/metrics").text) or {}
    return labels.get("num_gpu_blocks", "?")


def result(row: Row, clients: int, windows: list[Window]) -> RowResult:
    """A row's figures at one concurrency, over all its windows."""
    samples = [sample for window in windows for sample in window.samples]
    busy = [r for window in windows for r in window.running if r > 0] or [0.0]
    ttft = [s.ttft_s for s in samples if s.ttft_s is not None]
    return RowResult(
        row.name,
        clients,
        len(samples),
        sum(window.seconds for window in windows),
        statistics.fmean(busy),
        max(busy),
        sum(window.preemptions for window in windows),
        statistics.fmean(row.layer_blocks(s) for s in samples),
        percentile(ttft, 50),
        percentile(ttft, 99),
        percentile([inter_token_seconds(s) for s in samples if s.completion_tokens > 1], 50),
        samples,
    )


def inter_token_seconds(sample: Sample) -> float:
    """A streamed request's mean time per token after its first."""
    return (sample.latency_s - (sample.ttft_s or 0.0)) / (sample.completion_tokens - 1)


def measure(args, checkpoint: Path, kv_bytes: int) -> list[RowResult]:
    """Every row's server side by side (an idle vLLM sleeps), driven one at a time in rounds
    whose row order alternates (ABBA): a machine whose speed drifts during the run then weighs
    on every row alike instead of on whichever ran last."""
    rows = [Row(args, checkpoint, name) for name in args.rows]
    logs = args.cache / "kv-bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    # On CPU, VLLM_CPU_KVCACHE_SPACE (which `server_env` sets) overrides --kv-cache-memory-bytes.
    env = {k: v for k, v in server_env().items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    with Servers(logs, env) as servers:
        urls = {
            row.name: servers.start(
                row.name.replace(" ", "_").replace(",", ""),
                lambda port, row=row: row.command(args, checkpoint, port, kv_bytes),
                stock_env(env) if row.mode is None else env,
            ).url
            for row in rows
        }
        servers.wait_healthy(1800)
        for row in rows:
            print(f"{row.name}: {engine_kv_blocks(urls[row.name])} KV cache blocks", flush=True)
            # Not measured: a server's first requests pay one-time costs (lazy kernel builds,
            # the processor's first load).
            warmup = chat_bodies(args, str(checkpoint), 10**6, args.warmup, row.mode)
            asyncio.run(drive(urls[row.name], warmup, min(args.warmup, args.clients)))
        # At one client every request is a round of its own: the rows take turns request by
        # request.
        return [
            *run_phase(args, checkpoint, rows, urls, args.clients, args.requests, args.rounds, 1),
            *run_phase(args, checkpoint, rows, urls, 1, 1, args.single_requests, 2),
        ]


def run_phase(
    args, checkpoint: Path, rows: list[Row], urls: dict[str, str], clients: int, count: int,
    rounds: int, seed: int,
) -> list[RowResult]:  # fmt: skip
    """`rounds` rounds of `count` requests per row from `clients` clients, the row order
    reversed every other round."""
    if count * rounds == 0:
        return []
    windows: dict[str, list[Window]] = {row.name: [] for row in rows}
    for round_index in range(rounds):
        for row in rows if round_index % 2 == 0 else rows[::-1]:
            first = (seed * 100 + round_index) * 1000  # fresh images, alike across rows
            bodies = chat_bodies(args, str(checkpoint), first, count, row.mode)
            windows[row.name].append(asyncio.run(drive(urls[row.name], bodies, clients)))
        print(f"@ {clients}: round {round_index + 1} of {rounds} done", flush=True)
    return [result(row, clients, windows[row.name]) for row in rows]


def table(results: list[RowResult]) -> str:
    lines = []
    for clients in sorted({r.clients for r in results}, reverse=True):
        rows = [r for r in results if r.clients == clients]
        stock = next((r for r in rows if r.name == "stock"), rows[0])
        lines.append(f"\n{clients} client(s):")
        lines.append(
            f"{'row':<18} {'running':>13} {'preempt':>8} {'KV/req':>13} "
            f"{'req/s':>14} {'TTFT p50 s':>16} {'TTFT p99 s':>11} {'ITL p50 ms':>11}"
        )
        for r in rows:
            kv, kv_stock = r.kv_layer_blocks_per_request, stock.kv_layer_blocks_per_request
            lines.append(
                f"{r.name:<18} {r.running_mean:>6.1f} (max {r.running_max:>2.0f}) "
                f"{r.preemptions:>8.0f} {kv:>6.0f} ({kv / kv_stock:>4.0%}) "
                f"{r.throughput:>6.2f} ({r.throughput / stock.throughput:>4.2f}x) "
                f"{r.ttft_p50:>7.2f} ({r.ttft_p50 / stock.ttft_p50:>4.2f}x) {r.ttft_p99:>11.2f} "
                f"{r.itl_p50 * 1000:>11.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from crop_vllm.testing.tiny_models import build_tiny_model

    args.cache.mkdir(parents=True, exist_ok=True)
    checkpoint = build_tiny_model(args.arch, args.cache / f"{args.arch}-{args.size}", args.size)
    geometry = ModelGeometry.load(str(checkpoint), CropSettings(), family(args.arch).remote_code)
    image_tokens = geometry.image_tokens(args.image_size, args.image_size, None, CropMode.OFF).full
    # One stock request holds its image tokens, about 32 text tokens and its output.
    stock_tokens = image_tokens + 32 + args.output
    kv_bytes = kv_cache_bytes(args, geometry, stock_tokens)
    print(
        f"{args.arch} {args.size}: {geometry.kv_shape.num_layers} layers, KV cache "
        f"{kv_bytes / 2**20:.1f} MiB (~{args.fit:g} stock requests of {stock_tokens} tokens), "
        f"block {args.block_size}",
        flush=True,
    )
    results = measure(args, checkpoint, kv_bytes)
    print(table(results))
    if args.json:
        rows = [
            {**{k: v for k, v in asdict(r).items() if k != "samples"}, "throughput": r.throughput}
            for r in results
        ]
        report = {"arch": args.arch, "size": args.size, "kv_cache_bytes": kv_bytes, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
