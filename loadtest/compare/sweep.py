"""The comparison's servers and its sweep: every row at every concurrency, side by side.

Three servers on loopback: stock `vllm serve` (vLLM's default configuration, the plugin not
loaded), `vllm serve` with CROP as README tells users to run it (ILP enabled), and the gateway
in remote mode in front of it with a YOLO-World localizer (random weights: real forward passes
at the real input size, meaningless regions). At each concurrency the rows run one after the
other (so all see the same machine state), each a closed loop of that many streaming clients
on fresh images; the serving engine's own histograms (queue, prefill, decode) are read around
each.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

from crop_vllm.options import CropSettings
from loadtest.common import (
    RequestFailed,
    Sample,
    Servers,
    closed_loop,
    crop_command,
    engine_phases,
    gateway_command,
    machine_args,
    scrape,
    stock_command,
    stock_env,
    stream_chat,
)
from loadtest.compare.workload import CONFIGS, Config, Workload

#: The CROP engine's settings: the plugin's defaults, with the ILP modes allowed.
CROP_SETTINGS = CropSettings(enable_ilp=True)


@dataclass
class Level:
    """One row at one concurrency: what the clients saw, and the engine's phase means."""

    config: str
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    engine: dict[str, float] = field(default_factory=dict)


@dataclass
class Sweep:
    levels: list[Level]
    #: Rows this run could not serve, and why.
    unavailable: dict[str, str]


def start_servers(servers: Servers, args: argparse.Namespace, model: Path) -> dict[str, str]:
    """Stock vLLM, CROP's vLLM and the gateway; their URLs by role once all answer."""
    engine = [*machine_args(), "--served-model-name", "bench"]
    stock = servers.start(
        "stock", lambda p: stock_command(model, p, engine), stock_env(servers.env)
    )
    crop = servers.start("crop", lambda p: crop_command(model, p, engine, CROP_SETTINGS))
    weights, vocab = localizer_files(args.localizer_yaml, servers.logs)
    gateway = servers.start(
        "gateway",
        lambda p: gateway_command(
            model,
            p,
            crop.url,
            CROP_SETTINGS,
            [
                "--localizer-weights", str(weights), "--localizer-vocab-embeddings", str(vocab),
                "--localizer-imgsz", str(args.localizer_imgsz),
                "--max-concurrent-requests", "1024",
            ],
        ),
    )  # fmt: skip
    servers.wait_healthy(args.startup_timeout)
    return {"stock": stock.url, "crop": crop.url, "gateway": gateway.url}


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


async def sweep(args: argparse.Namespace, workload: Workload, urls: dict[str, str]) -> Sweep:
    configs = [c for c in CONFIGS if c.name in args.configs]
    unavailable: dict[str, str] = {}
    if workload.downscale is None:
        unavailable["downscale"] = "fixed-resolution model"
    timeout = httpx.Timeout(600.0)
    limits = httpx.Limits(max_connections=4 * max(args.concurrency))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        for config in configs:  # warm-up, and which rows this build serves
            if config.name in unavailable:
                continue
            try:
                await stream_chat(client, target(config, urls), workload.body(config, 10**6))
            except RequestFailed as exc:
                unavailable[config.name] = str(exc)
        runnable = [c for c in configs if c.name not in unavailable]
        levels: list[Level] = []
        counts = [max(args.requests, 2 * c) for c in args.concurrency]
        with tqdm(total=sum(counts) * len(runnable), desc="requests", unit="req") as bar:
            for concurrency, count in zip(args.concurrency, counts, strict=True):
                for config in runnable:
                    bar.set_postfix_str(f"{config.name} @ {concurrency}")
                    levels.append(
                        await run_level(
                            client, workload, config, urls, concurrency, count, bar.update
                        )
                    )
    return Sweep(levels, unavailable)


def target(config: Config, urls: dict[str, str]) -> str:
    return urls[config.target]


async def run_level(
    client: httpx.AsyncClient,
    workload: Workload,
    config: Config,
    urls: dict[str, str],
    concurrency: int,
    count: int,
    done: Callable[[], object],
) -> Level:
    """`count` fresh requests of `config` from `concurrency` closed-loop clients."""
    engine = urls["stock" if config.target == "stock" else "crop"]
    seeds = [concurrency * 10_000 + i for i in range(count)]

    async def call(index: int) -> Sample:
        sample = await stream_chat(
            client, target(config, urls), workload.body(config, seeds[index])
        )
        done()
        return sample

    before = await scrape(client, engine)
    samples, wall = await closed_loop(count, concurrency, call)
    after = await scrape(client, engine)
    return Level(config.name, concurrency, wall, samples, engine_phases(before, after))
