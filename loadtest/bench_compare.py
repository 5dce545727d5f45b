"""CROP against what users run today, on one machine in one run, over a concurrency sweep.

    python loadtest/bench_compare.py [--arch qwen2_5_vl] [--concurrency 1,2,4,8] [--out DIR]

Starts, on loopback: stock `vllm serve` (plugin not loaded, stock architecture), `vllm serve`
with the CROP plugin, and the gateway in remote mode in front of it with a YOLO-World localizer
(random weights: real forward passes at the real input size, meaningless regions). Then, at
each concurrency (a closed loop of that many clients, streaming), it sends the same image
questions as:

  stock vLLM        the full image to stock vLLM
  CROP off          the full image through the gateway, `crop.mode` off
  PLC               through the gateway, PLC on a client-given quarter region
  PLC (localizer)   through the gateway, PLC on the region the localizer finds (its cost included)
  ILP, PLC+ILP      as PLC, with ILP at the gateway's layer K (the plugin started with ILP on)
  PLC+ILP (loc.)    PLC+ILP on the localizer's region: the whole CROP pipeline
  downscale         stock vLLM with the image shrunk to PLC's visual-token budget (what users
                    do today); only meaningful for dynamic-resolution models (not LLaVA-1.5)

Configurations alternate within each concurrency level so all see the same machine state.
Engine caches are off (no prefix or processor-cache hits across repeats). Prints a table, and
writes results.json, results.csv and PNG plots to --out: throughput and TTFT p50/p99 against
concurrency, visual tokens kept, measured vs ideal speedup, and the localizer's share of
latency. The checkpoint is the mid-size random `bench` one (`crop_vllm.testing.tiny_models`;
`--size bench-1024` for its hidden-1024 LLM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm import tqdm

from crop_vllm.options import CropSettings
from crop_vllm.testing.photos import photo_jpeg
from crop_vllm.testing.servers import free_port

QUARTER = [0.0, 0.0, 0.5, 0.5]
QUESTIONS = (
    "What color is the umbrella the woman holds?",
    "How many dogs are next to the car?",
    "Is the cup on the left of the laptop?",
    "What is the person on the bicycle wearing?",
)


@dataclass(frozen=True)
class Config:
    """One row of the comparison: where requests go and what they ask CROP for."""

    name: str
    target: str  # "stock" (stock vLLM directly) or "gateway"
    mode: str | None = None  # the gateway's crop.mode
    client_region: bool = False
    downscale: bool = False


CONFIGS = (
    Config("stock vLLM", "stock"),
    Config("CROP off", "gateway", "off"),
    Config("PLC", "gateway", "plc", client_region=True),
    Config("PLC (localizer)", "gateway", "plc"),
    Config("ILP", "gateway", "ilp", client_region=True),
    Config("PLC+ILP", "gateway", "plc+ilp", client_region=True),
    Config("PLC+ILP (loc.)", "gateway", "plc+ilp"),
    Config("downscale", "stock", downscale=True),
)


@dataclass
class Sample:
    """One request's measurements."""

    latency_s: float
    ttft_s: float
    prompt_tokens: int
    completion_tokens: int
    visual_tokens: int | None = None  # prefilled visual tokens (usage.crop, or the geometry)
    visual_after_ilp: int | None = None  # visual tokens layers >= K see (usage.crop)
    localizer_s: float = 0.0


@dataclass
class Level:
    """One configuration at one concurrency."""

    config: str
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | str]:
        ttft = [s.ttft_s for s in self.samples]
        latency = [s.latency_s for s in self.samples]
        visual = [s.visual_tokens for s in self.samples if s.visual_tokens is not None]
        after_ilp = [s.visual_after_ilp for s in self.samples if s.visual_after_ilp is not None]
        return {
            "config": self.config,
            "concurrency": self.concurrency,
            "requests": len(self.samples),
            "req_per_s": len(self.samples) / self.wall_s,
            "output_tok_per_s": sum(s.completion_tokens for s in self.samples) / self.wall_s,
            "ttft_p50_s": float(np.percentile(ttft, 50)),
            "ttft_p99_s": float(np.percentile(ttft, 99)),
            "latency_p50_s": float(np.percentile(latency, 50)),
            "prompt_tokens": statistics.mean(s.prompt_tokens for s in self.samples),
            "visual_tokens": statistics.mean(visual) if visual else float("nan"),
            "visual_after_ilp": statistics.mean(after_ilp) if after_ilp else float("nan"),
            "localizer_share": sum(s.localizer_s for s in self.samples) / sum(latency),
        }


# --------------------------------------------------------------------------------------------
# Images and requests
# --------------------------------------------------------------------------------------------


def downscaled_size(model: str, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The largest size with the image's aspect whose full visual-token count is at most what
    PLC keeps of a quarter region: (width, height, its tokens, PLC's tokens); None for models
    that resize every image to a fixed grid (shrinking saves nothing there)."""
    from crop_vllm.layout import CropMode, Region
    from server.accounting import ModelGeometry

    geometry = ModelGeometry.load(model, CropSettings())
    budget = geometry.image_tokens(width, height, Region(*QUARTER), CropMode.PLC).after_plc
    for side in range(width, 0, -1):
        size = (side, max(1, round(side * height / width)))
        tokens = geometry.image_tokens(*size, None, CropMode.OFF).full
        if tokens <= budget:
            return (*size, tokens, budget)
    return None


def full_visual_tokens(model: str, width: int, height: int) -> int:
    """Visual tokens of an unpruned image (what stock vLLM prefills)."""
    from crop_vllm.layout import CropMode
    from server.accounting import ModelGeometry

    geometry = ModelGeometry.load(model, CropSettings())
    return geometry.image_tokens(width, height, None, CropMode.OFF).full


def chat_body(model: str, image: bytes, question: str, config: Config, max_tokens: int) -> dict:
    url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.target == "gateway":
        body["crop"] = {"mode": config.mode}
        if config.client_region:
            body["crop"]["regions"] = [QUARTER]
    return body


async def send(client: httpx.AsyncClient, url: str, body: dict) -> Sample:
    """Streams one chat completion; TTFT is the first chunk with generated text."""
    started = time.perf_counter()
    ttft, usage = None, None
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            if ttft is None and any(c["delta"].get("content") for c in chunk.get("choices", [])):
                ttft = time.perf_counter() - started
            usage = chunk.get("usage") or usage
    latency = time.perf_counter() - started
    if usage is None:
        raise RuntimeError("the stream ended without usage")
    crop = usage.get("crop")
    return Sample(
        latency_s=latency,
        ttft_s=latency if ttft is None else ttft,
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        visual_tokens=None if crop is None else crop["visual_tokens_after_plc"],
        visual_after_ilp=None if crop is None else crop["visual_tokens_after_ilp"],
        localizer_s=0.0 if crop is None else crop["localizer_seconds"],
    )


async def run_level(
    client: httpx.AsyncClient, url: str, bodies: list[dict], concurrency: int, bar: tqdm
) -> tuple[float, list[Sample]]:
    """A closed loop: `concurrency` workers send `bodies` one after another."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    samples: list[Sample] = []

    async def worker() -> None:
        while not queue.empty():
            samples.append(await send(client, url, queue.get_nowait()))
            bar.update()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, samples


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    url: str
    popen: subprocess.Popen
    log: Path


def start(name: str, command: list[str], port: int, logs: Path, env: dict[str, str]) -> Process:
    log = logs / f"{name}.log"
    with log.open("w") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Process(name, f"http://127.0.0.1:{port}", popen, log)


def wait_healthy(processes: list[Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(processes)
    with tqdm(total=len(pending), desc="starting servers", unit="server") as bar:
        while pending:
            for process in list(pending):
                if process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited:\n{process.log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(process.url + "/health", timeout=2).status_code == 200:
                        pending.remove(process)
                        bar.update()
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy after {timeout} s: {[p.name for p in pending]}")
            time.sleep(1)


@contextlib.contextmanager
def servers(args: argparse.Namespace, model: Path, logs: Path) -> Iterator[dict[str, Process]]:
    """Stock vLLM, CROP vLLM and the gateway, stopped on exit."""
    from crop_vllm.demo import crop_architecture, vllm_serve_prefix

    engine_flags = [
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
        "--max-num-seqs", str(max(args.concurrency)), "--no-enable-prefix-caching",
        "--mm-processor-cache-gb", "0", "--limit-mm-per-prompt", '{"image": 1}',
        "--served-model-name", "bench",
    ]  # fmt: skip
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "HF_HUB_OFFLINE": "1",
    }
    overrides = {"architectures": [crop_architecture(model)], "crop_enable_ilp": True}
    ports = {name: free_port() for name in ("stock", "crop", "gateway")}
    started: dict[str, Process] = {}
    try:
        started["stock"] = start(
            "stock",
            [*vllm_serve_prefix(model), "--port", str(ports["stock"]), *engine_flags],
            ports["stock"],
            logs,
            {**env, "VLLM_PLUGINS": ""},  # no plugin loaded: stock vLLM
        )
        started["crop"] = start(
            "crop",
            [
                *vllm_serve_prefix(model), "--port", str(ports["crop"]), *engine_flags,
                "--hf-overrides", json.dumps(overrides), "--trust-request-mm-kwargs",
            ],
            ports["crop"],
            logs,
            env,
        )  # fmt: skip
        weights, vocab = localizer_files(args.localizer_yaml, logs)
        started["gateway"] = start(
            "gateway",
            [
                sys.executable, "-m", "server.cli", "serve", "--model", str(model),
                "--served-model-name", "bench", "--engine", "remote",
                "--backend", started["crop"].url, "--port", str(ports["gateway"]),
                "--localizer-weights", str(weights), "--localizer-vocab-embeddings", str(vocab),
                "--localizer-imgsz", str(args.localizer_imgsz), "--crop-enable-ilp",
                "--max-concurrent-requests", "1024", "--log-level", "warning",
            ],
            ports["gateway"],
            logs,
            env,
        )  # fmt: skip
        wait_healthy(list(started.values()), timeout=args.startup_timeout)
        yield started
    finally:
        for process in started.values():
            process.popen.terminate()
        for process in started.values():
            try:
                process.popen.wait(60)
            except subprocess.TimeoutExpired:
                process.popen.kill()


def localizer_files(cfg: str, folder: Path) -> tuple[Path, Path]:
    """A random-weight YOLO-World checkpoint and vocabulary embeddings, as the gateway loads
    real ones (same architecture and cost, meaningless classes)."""
    import torch

    from crop_localizer.testing import fake_vocabulary, random_world_model
    from crop_localizer.vocabulary import OBJECT_NAMES

    weights, vocab = folder / cfg.replace(".yaml", ".pt"), folder / "vocab.npz"
    torch.save({"model": random_world_model(cfg)}, weights)
    fake_vocabulary(OBJECT_NAMES).save(vocab)
    return weights, vocab


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------


async def available(client: httpx.AsyncClient, url: str, body: dict) -> str | None:
    """None when the gateway serves this configuration, else why not."""
    try:
        await send(client, url, body)
    except RuntimeError as exc:
        return str(exc)
    return None


async def sweep(args: argparse.Namespace, model: Path, urls: dict[str, str]) -> dict[str, Any]:
    width = height = args.image_size
    small = downscaled_size(str(model), width, height)
    full = full_visual_tokens(str(model), width, height)
    configs = [c for c in CONFIGS if c.name in args.configs]
    unavailable, reasons = {}, {}
    if small is None:
        unavailable["downscale"] = reasons["downscale"] = "fixed-resolution model"
        configs = [c for c in configs if not c.downscale]
    timeout = httpx.Timeout(600.0)
    limits = httpx.Limits(max_connections=4 * max(args.concurrency))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        def body(config: Config, seed: int) -> dict:
            size = small[:2] if small and config.downscale else (width, height)
            question = QUESTIONS[seed % len(QUESTIONS)]
            return chat_body("bench", photo_jpeg(seed, *size), question, config, args.max_tokens)

        def url(config: Config) -> str:
            return urls[config.target]

        for config in configs:  # warm-up, and which configurations this build serves
            reason = await available(client, url(config), body(config, 10**6))
            if reason is not None:
                unavailable[config.name], reasons[config.name] = "failed", reason
        runnable = [c for c in configs if c.name not in unavailable]
        levels: list[Level] = []
        total = sum(max(args.requests, 2 * c) for c in args.concurrency) * len(runnable)
        with tqdm(total=total, desc="requests", unit="req") as bar:
            for concurrency in args.concurrency:
                count = max(args.requests, 2 * concurrency)
                seeds = [concurrency * 10_000 + i for i in range(count)]
                for config in runnable:
                    bar.set_postfix_str(f"{config.name} @ {concurrency}")
                    bodies = [body(config, seed) for seed in seeds]
                    wall, samples = await run_level(client, url(config), bodies, concurrency, bar)
                    if config.target == "stock":  # no usage.crop: the geometry's count
                        for sample in samples:
                            sample.visual_tokens = small[2] if config.downscale else full
                            sample.visual_after_ilp = sample.visual_tokens
                    levels.append(Level(config.name, concurrency, wall, samples))
    return {"levels": levels, "unavailable": unavailable, "reasons": reasons, "downscale": small}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def with_speedups(rows: list[dict[str, Any]], layers: int, ilp_layer: int) -> list[dict[str, Any]]:
    """Adds throughput relative to stock vLLM at the same concurrency, and the ideal speedup:
    stock's layer-weighted prefill tokens over the row's (what a prefill-bound engine would
    gain). A prompt token costs `layers` decoder layers, a visual token ILP drops `ilp_layer`."""

    def layer_weighted(row: dict[str, Any]) -> float:
        dropped = row["visual_tokens"] - row["visual_after_ilp"]
        dropped = 0.0 if math.isnan(dropped) else dropped
        return layers * row["prompt_tokens"] - (layers - min(ilp_layer, layers)) * dropped

    stock = {r["concurrency"]: r for r in rows if r["config"] == "stock vLLM"}
    for row in rows:
        base = stock.get(row["concurrency"])
        row["speedup"] = row["req_per_s"] / base["req_per_s"] if base else float("nan")
        row["ideal_speedup"] = layer_weighted(base) / layer_weighted(row) if base else float("nan")
    return rows


def print_table(rows: list[dict[str, Any]], unavailable: dict[str, str], header: str) -> str:
    columns = (
        ("config", "{:<16}"), ("concurrency", "{:>4}"), ("req_per_s", "{:>7.2f}"),
        ("output_tok_per_s", "{:>7.1f}"), ("ttft_p50_s", "{:>7.2f}"), ("ttft_p99_s", "{:>7.2f}"),
        ("prompt_tokens", "{:>7.0f}"), ("visual_tokens", "{:>7.0f}"), ("speedup", "{:>6.2f}x"),
        ("ideal_speedup", "{:>6.2f}x"), ("localizer_share", "{:>6.1%}"),
    )  # fmt: skip
    titles = (
        "config", "conc", "req/s", "tok/s", "TTFT50", "TTFT99", "prompt", "visual",
        "speedup", "ideal", "loc.%",
    )  # fmt: skip
    widths = [len(fmt.format(rows[0][key])) for key, fmt in columns] if rows else []
    lines = [header, "  ".join(t.rjust(w) if i else t.ljust(w) for i, (t, w) in
                               enumerate(zip(titles, widths, strict=True)))]  # fmt: skip
    for row in rows:
        lines.append("  ".join(fmt.format(row[key]) for key, fmt in columns))
    for name, reason in unavailable.items():
        lines.append(f"{name:<16}  n/a ({reason})")
    text = "\n".join(lines)
    print("\n" + text)
    return text


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in rows))
    series = {c: [r for r in rows if r["config"] == c] for c in configs}
    written = []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(textwrap.fill(title, 120), fontsize=6)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    def against_concurrency(ax: Any, key: str, label: str, style: str = "-o") -> None:
        for config, points in series.items():
            ax.plot([p["concurrency"] for p in points], [p[key] for p in points], style,
                    label=config)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)

    fig, ax = plt.subplots(figsize=(6, 4))
    against_concurrency(ax, "req_per_s", "requests / s")
    ax.legend(fontsize=8)
    save(fig, "throughput.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    against_concurrency(axes[0], "ttft_p50_s", "TTFT p50 (s)")
    against_concurrency(axes[1], "ttft_p99_s", "TTFT p99 (s)")
    axes[0].legend(fontsize=8)
    save(fig, "ttft.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    prompt = [statistics.mean(p["prompt_tokens"] for p in series[c]) for c in configs]
    ax.bar(configs, prompt)
    ax.set_ylabel("prompt tokens per request (image + text)")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    save(fig, "tokens_kept.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (config, points) in enumerate(series.items()):
        color = f"C{index}"
        xs = [p["concurrency"] for p in points]
        ax.plot(xs, [p["speedup"] for p in points], "-o", color=color, label=f"{config}")
        ax.plot(xs, [p["ideal_speedup"] for p in points], ":", color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("throughput vs stock vLLM (dotted: ideal)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "speedup.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    against_concurrency(ax, "localizer_share", "localizer time / request latency")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=8)
    save(fig, "localizer_share.png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="qwen2_5_vl", choices=("llava", "llava_next",
                        "qwen2_5_vl"))  # fmt: skip
    parser.add_argument("--model", type=Path, help="checkpoint (default: a random one of --size)")
    parser.add_argument("--size", default="bench", choices=("bench", "bench-1024"))
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8]
    )
    parser.add_argument("--requests", type=int, default=8, help="per level (at least 2x conc.)")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=672, help="square image side (px)")
    parser.add_argument("--localizer-yaml", default="yolov8s-worldv2.yaml")
    parser.add_argument("--localizer-imgsz", type=int, default=640, help="detector input (px)")
    parser.add_argument("--configs", type=lambda s: s.split(","), default=[c.name for c in CONFIGS])
    parser.add_argument("--startup-timeout", type=float, default=900)
    parser.add_argument(
        "--out", type=Path, default=Path("artifacts") / "bench_compare", help="results folder"
    )
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/crop-serving/bench")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from crop_vllm.testing.tiny_models import build_tiny_model

    model = args.model or build_tiny_model(
        args.arch, args.cache / f"{args.arch}-{args.size}", args.size
    )
    logs = args.out / "logs"  # the servers' logs, kept for post-mortems
    logs.mkdir(exist_ok=True)
    load_before = os.getloadavg()[0]  # other work on the machine skews every number
    with servers(args, Path(model), logs) as running:
        urls = {"stock": running["stock"].url, "gateway": running["gateway"].url}
        try:
            result = asyncio.run(sweep(args, Path(model), urls))
        except RuntimeError as exc:
            raise SystemExit(f"benchmark failed: {exc}\nserver logs: {logs}") from exc
    ilp_layer = CropSettings().ilp_layer  # the gateway's and the engine's default K
    rows = with_speedups(
        [level.summary() for level in result["levels"]],
        layers=text_layers(Path(model)),
        ilp_layer=ilp_layer,
    )
    machine = (
        f"{os.cpu_count()} CPU cores, {platform_name()}, 1-min load average "
        f"{load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    down = result["downscale"]
    downscale = (
        f"downscale {down[0]}x{down[1]} ({down[2]} visual tokens vs PLC's {down[3]})"
        if down
        else "no downscale"
    )
    header = (
        f"{Path(model).name} (random weights), {args.image_size}x{args.image_size} images, "
        f"quarter region, outside stride 4, {args.max_tokens} output tokens, localizer "
        f"{args.localizer_yaml} at {args.localizer_imgsz} px on CPU; ILP at layer "
        f"{ilp_layer}; {downscale}; {machine}"
    )
    table = print_table(rows, result["unavailable"], header)
    (args.out / "table.txt").write_text(table + "\n")
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "header": header,
                "rows": rows,
                "unavailable": result["reasons"],
                "samples": [asdict(level) for level in result["levels"]],
            },
            indent=1,
        )
    )
    with (args.out / "results.csv").open("w") as out:
        out.write(",".join(rows[0]) + "\n")
        out.writelines(",".join(str(v) for v in row.values()) + "\n" for row in rows)
    for path in plot(rows, args.out, header):
        print(f"wrote {path}")
    return 0


def text_layers(model: Path) -> int:
    """Decoder layers of the checkpoint's language model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    return config.get_text_config().num_hidden_layers


def platform_name() -> str:
    import platform

    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
