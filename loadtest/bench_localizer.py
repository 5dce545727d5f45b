"""Benchmark the YOLO-World localizer: images/s and latency against batch size and max wait.

    python -m loadtest.bench_localizer [--models s m] [--max-batch 1 4 8] [--max-wait-ms 2 20]

A closed loop of `--concurrency` clients, each sending one image + question at a time, drives
one localizer per setting; the table shows throughput, request latency p50/p99 and the mean
images per forward pass. Weights are random (built from the YAML, batch norms recalibrated):
the cost is that of the real model, the boxes are meaningless (and, random weights passing every
anchor, NMS costs more than with trained ones). Stops starting new settings
once `--budget-s` is spent, so it always ends in a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from PIL import Image
from prometheus_client import CollectorRegistry

from crop_localizer.detector import ClassPrompts, YoloWorldDetector
from crop_localizer.metrics import LocalizerMetrics
from crop_localizer.region import RegionRule
from crop_localizer.testing import fake_vocabulary, random_world_model
from crop_localizer.vocabulary import OBJECT_NAMES
from crop_localizer.yolo_world import YoloWorldLocalizer
from crop_vllm.testing.photos import picture
from loadtest.common import QUESTIONS, closed_loop, percentile


@dataclass(frozen=True)
class Row:
    model: str
    clients: int
    max_batch: int
    max_wait_ms: float
    images_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float


async def drive(
    localizer: YoloWorldLocalizer, images: list[Image.Image], requests: int, concurrency: int
) -> tuple[float, list[float]]:
    """Closed loop: `concurrency` clients share `requests`; returns (wall seconds, latencies)."""

    async def call(i: int) -> float:
        started = time.perf_counter()
        await localizer.localize([images[i % len(images)]], [QUESTIONS[i % len(QUESTIONS)]])
        return time.perf_counter() - started

    latencies, wall = await closed_loop(requests, concurrency, call)
    return wall, latencies


def batch_counts(registry: CollectorRegistry) -> tuple[float, float]:
    """(forward passes, images they held) so far."""
    value = registry.get_sample_value
    return (
        value("crop_localizer_batch_size_count") or 0.0,
        value("crop_localizer_batch_size_sum") or 0.0,
    )


def stage_times(detector: YoloWorldDetector, vocabulary, image: Image.Image) -> str:
    """Median milliseconds of preprocess / forward / NMS for one image (2 class prompts)."""
    prompts = [ClassPrompts(("umbrella", "woman"), vocabulary.embed(["umbrella", "woman"]))]
    detector.detect([image], prompts)  # warm-up: the first pass at a shape builds kernels
    samples = []
    for _ in range(3):
        with torch.inference_mode():
            t0 = time.perf_counter()
            x = detector.preprocess([image])
            t1 = time.perf_counter()
            preds = detector.inference(x, detector.pad_prompts(prompts))
            t2 = time.perf_counter()
            detector.postprocess(preds, prompts, [(image.height, image.width)])
            t3 = time.perf_counter()
        samples.append((t1 - t0, t2 - t1, t3 - t2))
    pre, forward, nms = (1000 * statistics.median(column) for column in zip(*samples, strict=True))
    return f"preprocess {pre:.0f} ms, forward {forward:.0f} ms, NMS+scaling {nms:.0f} ms"


async def measure(
    name: str,
    detector: YoloWorldDetector,
    vocabulary,
    images: list[Image.Image],
    setting: tuple[int, float, int],
    requests: int,
) -> Row:
    max_batch, max_wait_ms, concurrency = setting
    registry = CollectorRegistry()
    localizer = YoloWorldLocalizer(
        detector,
        vocabulary,
        rule=RegionRule(),
        metrics=LocalizerMetrics(registry),
        max_batch=max_batch,
        max_wait_s=max_wait_ms / 1000,
        max_queue=max(64, concurrency),
    )
    await drive(localizer, images, max_batch, max_batch)  # warm-up at this batch shape
    before = batch_counts(registry)
    wall, latencies = await drive(localizer, images, requests, concurrency)
    after = batch_counts(registry)
    await localizer.aclose()
    return Row(
        name,
        concurrency,
        max_batch,
        max_wait_ms,
        requests / wall,
        1000 * statistics.median(latencies),
        1000 * percentile(latencies, 99),
        (after[1] - before[1]) / max(after[0] - before[0], 1.0),
    )


async def bench_model(size: str, args: argparse.Namespace, deadline: float) -> list[Row]:
    name = f"yolov8{size}-worldv2"
    model = random_world_model(f"{name}.yaml", calibration_batches=2)
    detector = YoloWorldDetector(model, imgsz=args.imgsz, device=args.device, half=args.half)
    vocabulary = fake_vocabulary(OBJECT_NAMES)
    images = [picture(seed, 640, 480, noise=12) for seed in range(8)]
    print(f"{name}: {stage_times(detector, vocabulary, images[0])}", flush=True)
    # One client alone first: the service time without queueing; then the concurrent grid.
    settings = [(1, 0.0, 1)] + [
        (max_batch, wait, args.concurrency)
        for max_batch in args.max_batch
        for wait in args.max_wait_ms
    ]
    rows = []
    for setting in settings:
        if time.perf_counter() > deadline:
            print(f"  budget spent: skipping {name} (max_batch, wait_ms, clients) = {setting}")
            continue
        rows.append(await measure(name, detector, vocabulary, images, setting, args.requests))
        print(f"  {rows[-1]}", flush=True)
    return rows


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'model':<16} {'clients':>7} {'max_batch':>9} {'wait_ms':>7} {'img/s':>6} {'p50_ms':>7} "
    )
    header += f"{'p99_ms':>7} {'mean_batch':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.model:<16} {r.clients:>7} {r.max_batch:>9} {r.max_wait_ms:>7g} "
            f"{r.images_per_s:>6.2f} {r.p50_ms:>7.0f} {r.p99_ms:>7.0f} {r.mean_batch:>10.2f}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["s", "m"], choices=list("nsmlx"))
    parser.add_argument("--max-batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--max-wait-ms", nargs="+", type=float, default=[2.0, 20.0])
    parser.add_argument("--requests", type=int, default=12, help="requests per setting")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--half", action="store_true")
    parser.add_argument("--budget-s", type=float, default=180.0)
    args = parser.parse_args()

    print(
        f"YOLO-World localizer benchmark: RANDOM-INIT weights from the YAML (timing only), "
        f"{args.imgsz} px, device={args.device}, half={args.half}, torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({platform.machine()}); "
        f"{args.concurrency} closed-loop clients, {args.requests} requests per setting, "
        f"1 image per request; p99 of so few samples is close to the maximum. "
        f"Load average before start (other processes share these CPUs): {os.getloadavg()[0]:.1f}"
    )
    deadline = time.perf_counter() + args.budget_s
    rows: list[Row] = []
    for size in args.models:
        rows += await bench_model(size, args, deadline)
    print(f"\nLoad average at the end: {os.getloadavg()[0]:.1f}")
    print_table(rows)


if __name__ == "__main__":
    asyncio.run(main())
