"""KV-bound serving benchmark: how many requests fit, and what that does to throughput.

    python -m crop_vllm.bench.kv [--arch llava] [--clients 16] [--json OUT] [--short]

Production GPUs are bound by KV-cache memory: the requests that fit decide throughput. This
reproduces that regime on one machine: the KV cache is sized (`--fit`, default 4) so that stock
vLLM holds about four requests of the workload, and the same bytes are given to every row. Each
row is a real `vllm serve` process on the `bench` checkpoint, driven by `--clients` concurrent
streaming clients (closed loop, fresh images, a quarter-image client region, `--output` tokens
each), then by one client:

- stock: the stock architecture with vLLM's default configuration (what `vllm serve MODEL` does);
- PLC; ILP without the KV saving (`crop_ilp_compact_kv=false`); ILP; PLC+ILP: the CROP
  architecture, with the engine settings README tells users to run (`CropSettings`).

Printed per row: requests running at once (vLLM's own `vllm:num_requests_running`, sampled),
preemptions (`vllm:num_preemptions`), KV per request (layer-blocks of the request's final token
count: the allocator's own arithmetic, `crop_vllm.ilp.plan.kv_blocks`, checked against vLLM's
allocator in the tests) relative to stock, throughput (requests/s) and TTFT p50/p99, each with
its ratio to the stock row measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crop_vllm.bench.workload import QUARTER, QUESTIONS, images

#: name -> (CROP mode of the requests or None for stock, CROP settings of the engine)
ROWS: dict[str, tuple[str | None, dict[str, object]]] = {
    "stock": (None, {}),
    "PLC": ("plc", {}),
    "ILP, no KV saving": ("ilp", {"enable_ilp": True, "ilp_compact_kv": False}),
    "ILP": ("ilp", {"enable_ilp": True}),
    "PLC+ILP": ("plc+ilp", {"enable_ilp": True}),
}


@dataclass
class Sample:
    ttft: float
    latency: float
    prompt_tokens: int
    completion_tokens: int


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
    samples: list[Sample] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="llava", choices=["llava", "llava_next", "qwen2_5_vl"])
    parser.add_argument("--size", default="bench", choices=["bench", "bench-1024"])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=48, help="per row at --clients")
    parser.add_argument("--single-requests", type=int, default=4, help="per row at 1 client")
    parser.add_argument("--output", type=int, default=64, help="output tokens per request")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--fit", type=float, default=4.0, help="stock requests the KV cache fits")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--short", action="store_true", help="a quick run (gpu-check)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/crop-serving/bench")
    args = parser.parse_args(argv)
    if args.short:
        args.requests, args.single_requests, args.output = 24, 2, 32
    return args


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


class Workload:
    """The checkpoint's geometry: prompt, image tokens, drops, KV shape."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path) -> None:
        from transformers import AutoConfig, AutoImageProcessor

        from crop_vllm.geometry import image_grids, num_image_tokens
        from crop_vllm.ilp.plan import KvShape, image_keep_mask
        from crop_vllm.layout import CropMode, Region
        from crop_vllm.options import CropSettings, ImagePlan

        self.args = args
        self.config = AutoConfig.from_pretrained(checkpoint)
        processor = AutoImageProcessor.from_pretrained(checkpoint).to_dict()
        grids = image_grids(self.config, processor, args.image_size, args.image_size)
        region, plc = Region(*QUARTER), CropSettings().plc
        self.image_tokens = num_image_tokens(grids, None, plc)
        self.dropped = {
            mode: len(mask) - sum(mask)
            for mode in ("ilp", "plc+ilp")
            for mask in [image_keep_mask(grids, ImagePlan(CropMode(mode), region), plc)]
        }
        self.kv_shape = KvShape.of(self.config)
        self.num_layers = self.kv_shape.num_layers

    def kv_cache_bytes(self, stock_tokens_per_request: int) -> int:
        """Bytes that hold `--fit` stock requests of `stock_tokens_per_request` tokens."""
        blocks = math.ceil(stock_tokens_per_request / self.args.block_size) * self.args.fit
        layer_block = self.kv_shape.layer_block_bytes(self.args.block_size, 4)  # float32 on CPU
        return blocks * self.num_layers * layer_block

    def layer_blocks(self, sample: Sample, mode: str | None, settings: dict[str, object]) -> int:
        """Layer-blocks the request held at its end (ILP rows: `kv_blocks`)."""
        from crop_vllm.ilp.plan import kv_blocks
        from crop_vllm.options import CropSettings

        tokens = sample.prompt_tokens + sample.completion_tokens
        crop = CropSettings(**settings)  # type: ignore[arg-type]
        compacted = crop.enable_ilp and crop.ilp_compact_kv and mode in self.dropped
        full, saved = kv_blocks(
            tokens,
            self.dropped[mode] if compacted else 0,  # type: ignore[index]
            self.args.block_size,
            self.num_layers,
            crop.ilp_layer,
        )
        return saved if compacted else full


def image_url(picture: Any) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def server_command(args, checkpoint: Path, port: int, mode, settings, kv_bytes: int) -> list[str]:
    from crop_vllm.demo import vllm_serve_prefix
    from crop_vllm.families import family_of_architecture
    from crop_vllm.options import CropSettings

    stock = family_of_architecture(
        json.loads((checkpoint / "config.json").read_text())["architectures"][0]
    )
    command = [*vllm_serve_prefix(checkpoint), "--port", str(port), "--dtype", "float32"]
    command += ["--max-model-len", "4096", "--block-size", str(args.block_size)]
    command += ["--kv-cache-memory-bytes", str(kv_bytes), "--max-num-seqs", str(args.clients)]
    command += ["--mm-processor-cache-gb", "0"]  # fresh images anyway; keeps every row alike
    if mode is not None:
        crop = CropSettings(**settings)  # type: ignore[arg-type]
        overrides = {"architectures": [stock.crop_architecture], **crop.to_hf_overrides()}
        command += ["--hf-overrides", json.dumps(overrides), "--trust-request-mm-kwargs"]
        for key, value in crop.engine_requirements().items():
            flag = key.replace("_", "-")
            command.append(f"--{flag}" if value else f"--no-{flag}")
    return command


async def scrape(client, url: str, names: tuple[str, ...]) -> dict[str, float]:
    text = (await client.get(f"{url}/metrics")).text
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        for name in names:
            if line.startswith(name) and not line.startswith(name + "_"):
                values[name] += float(line.rsplit(" ", 1)[1])
    return values


async def drive(
    url: str, model: str, workload: list[dict], clients: int
) -> tuple[list[Sample], dict]:
    """Closed-loop streaming clients over `workload`; samples and vLLM gauges while running."""
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for body in workload:
        queue.put_nowait(body)
    samples: list[Sample] = []
    running: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(timeout=600) as client:
        before = await scrape(client, url, ("vllm:num_preemptions_total",))

        async def watch() -> None:
            while not done.is_set():
                gauges = await scrape(client, url, ("vllm:num_requests_running",))
                running.append(gauges["vllm:num_requests_running"])
                await asyncio.sleep(0.2)

        async def worker() -> None:
            while not queue.empty():
                body = {**queue.get_nowait(), "model": model, "stream": True}
                body["stream_options"] = {"include_usage": True}
                start = time.perf_counter()
                first = None
                usage = {}
                async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
                    reply.raise_for_status()
                    async for line in reply.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if first is None and chunk.get("choices"):
                            first = time.perf_counter()
                        usage = chunk.get("usage") or usage
                end = time.perf_counter()
                samples.append(
                    Sample(
                        (first or end) - start,
                        end - start,
                        usage["prompt_tokens"],
                        usage["completion_tokens"],
                    )
                )

        watcher = asyncio.create_task(watch())
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - start
        done.set()
        await watcher
        after = await scrape(client, url, ("vllm:num_preemptions_total",))
    busy = [r for r in running if r > 0] or [0.0]
    return samples, {
        "seconds": seconds,
        "running_mean": statistics.fmean(busy),
        "running_max": max(busy),
        "preemptions": after["vllm:num_preemptions_total"] - before["vllm:num_preemptions_total"],
    }


def chat_bodies(args, seed: int, count: int, mode: str | None) -> list[dict]:
    bodies = []
    for index, picture in enumerate(images(count, args.image_size, seed)):
        content = [
            {"type": "image_url", "image_url": {"url": image_url(picture)}},
            {"type": "text", "text": QUESTIONS[index % len(QUESTIONS)]},
        ]
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": args.output,
            "temperature": 0,
            "ignore_eos": True,
        }
        if mode is not None:
            body["mm_processor_kwargs"] = {"crop_mode": mode, "crop_regions": [QUARTER]}
        bodies.append(body)
    return bodies


def run_row(
    args, checkpoint: Path, workload: Workload, name: str, kv_bytes: int
) -> list[RowResult]:
    from crop_vllm.testing.servers import free_port, wait_until_healthy

    mode, settings = ROWS[name]
    port = free_port()
    log = args.cache / f"kv-bench-{name.replace(' ', '_').replace(',', '')}.log"
    env = {
        **os.environ,
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
    }
    command = server_command(args, checkpoint, port, mode, settings, kv_bytes)
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_healthy(url, process, log, timeout=900)
        results = []
        for clients, count, seed in (
            (args.clients, args.requests, 1),
            (1, args.single_requests, 2),
        ):
            bodies = chat_bodies(args, seed * 1000, count, mode)
            samples, gauges = asyncio.run(drive(url, str(checkpoint), bodies, clients))
            blocks = [workload.layer_blocks(s, mode, settings) for s in samples]
            results.append(
                RowResult(
                    name,
                    clients,
                    len(samples),
                    gauges["seconds"],
                    gauges["running_mean"],
                    gauges["running_max"],
                    gauges["preemptions"],
                    statistics.fmean(blocks),
                    percentile([s.ttft for s in samples], 0.5),
                    percentile([s.ttft for s in samples], 0.99),
                    samples,
                )
            )
        return results
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def table(results: list[RowResult]) -> str:
    lines = []
    for clients in sorted({r.clients for r in results}, reverse=True):
        rows = [r for r in results if r.clients == clients]
        stock = next((r for r in rows if r.name == "stock"), rows[0])
        lines.append(f"\n{clients} client(s):")
        lines.append(
            f"{'row':<18} {'running':>13} {'preempt':>8} {'KV/req':>13} "
            f"{'req/s':>14} {'TTFT p50 s':>16} {'TTFT p99 s':>11}"
        )
        for r in rows:
            kv, kv_stock = r.kv_layer_blocks_per_request, stock.kv_layer_blocks_per_request
            lines.append(
                f"{r.name:<18} {r.running_mean:>6.1f} (max {r.running_max:>2.0f}) "
                f"{r.preemptions:>8.0f} {kv:>6.0f} ({kv / kv_stock:>4.0%}) "
                f"{r.throughput:>6.2f} ({r.throughput / stock.throughput:>4.2f}x) "
                f"{r.ttft_p50:>7.2f} ({r.ttft_p50 / stock.ttft_p50:>4.2f}x) {r.ttft_p99:>11.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from crop_vllm.testing.tiny_models import build_tiny_model

    args.cache.mkdir(parents=True, exist_ok=True)
    folder = args.cache / f"{args.arch}-{args.size}"
    checkpoint = build_tiny_model(args.arch, folder, size=args.size)
    workload = Workload(args, checkpoint)
    # One stock request holds its image tokens, about 32 text tokens and its output.
    stock_tokens = workload.image_tokens + 32 + args.output
    kv_bytes = workload.kv_cache_bytes(stock_tokens)
    print(
        f"{args.arch} {args.size}: {workload.num_layers} layers, KV cache "
        f"{kv_bytes / 2**20:.1f} MiB (~{args.fit:g} stock requests of {stock_tokens} tokens), "
        f"block {args.block_size}",
        flush=True,
    )
    results = []
    for name in args.rows:
        results += run_row(args, checkpoint, workload, name, kv_bytes)
        print(f"{name}: done", flush=True)
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
