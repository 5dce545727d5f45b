"""What the PLC and ILP benchmarks share: the mid-size checkpoint, one CROP engine on it, and the
image+question workload (a fresh picture per request, a quarter-image region)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from crop_vllm.families import MODEL_TYPES, family, language_config
from crop_vllm.testing.photos import picture
from crop_vllm.testing.tiny_models import chat_prompt
from loadtest.common import QUESTIONS

#: vLLM's per-request prefill time (scheduled to first token, vision encoder included) and the
#: time between output tokens: engine-side, without preprocessing or client overhead.
PREFILL_SECONDS = "vllm:request_prefill_time_seconds"
INTER_TOKEN_SECONDS = "vllm:inter_token_latency_seconds"


def add_workload_arguments(parser: argparse.ArgumentParser, requests: int) -> None:
    parser.add_argument("--arch", default="llava", choices=MODEL_TYPES)
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/crop-serving/bench")


def images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """`count` distinct square pictures (no cache hits between them or across seeds)."""
    seeds = np.random.default_rng(seed).integers(0, 2**31, count)
    return [picture(int(s), size, size) for s in seeds]


def image_requests(
    args: argparse.Namespace, seed: int, crop: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """`args.requests` prompts, each with its own fresh image; `crop` as processor kwargs."""
    requests = []
    for index, image in enumerate(images(args.requests, args.image_size, seed)):
        request: dict[str, Any] = {
            "prompt": chat_prompt(args.arch, 1, QUESTIONS[index % len(QUESTIONS)]),
            "multi_modal_data": {"image": image},
        }
        if crop is not None:
            request["mm_processor_kwargs"] = crop
        requests.append(request)
    return requests


def bench_engine(args: argparse.Namespace, **crop_settings: object) -> tuple[Any, Path, Any]:
    """(LLM, checkpoint, HF config): one CROP engine on the cached `bench` checkpoint, with
    every cache off so each repeat pays full price (fresh images, no prefix hits)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    # `time_decoder_layers` sends its functions to the engine's worker process.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    from transformers import AutoConfig
    from vllm import LLM

    from crop_vllm.testing.tiny_models import build_tiny_model

    checkpoint = build_tiny_model(args.arch, args.cache / f"{args.arch}-bench", size="bench")
    remote_code = family(args.arch).remote_code
    config = AutoConfig.from_pretrained(checkpoint, trust_remote_code=remote_code)
    llm = LLM(
        model=str(checkpoint),
        hf_overrides={"architectures": [family(args.arch).crop_architecture], **crop_settings},
        trust_remote_code=remote_code,
        dtype="float32",
        enforce_eager=True,
        max_model_len=4096,
        max_num_seqs=args.requests,
        max_num_batched_tokens=8192,
        mm_processor_cache_gb=0,
        enable_prefix_caching=False,
        disable_log_stats=False,
        seed=0,
    )
    return llm, checkpoint, config


def workload_grids(args: argparse.Namespace, checkpoint: Path, config: Any) -> list[Any]:
    """The visual grids of one workload image (`crop_vllm.geometry`, as the gateway counts)."""
    from crop_vllm.geometry import image_grids, image_processor_settings

    processor = image_processor_settings(checkpoint, config)
    return image_grids(config, processor, args.image_size, args.image_size)


def num_decoder_layers(config: Any) -> int:
    """The LLM's layer count."""
    return language_config(config).num_hidden_layers


def histogram_totals(llm: Any, name: str) -> tuple[float, int]:
    """(sum, count) so far of one of vLLM's histograms (its engine-side timings)."""
    for metric in llm.get_metrics():
        if metric.name == name:
            return metric.sum, metric.count
    raise RuntimeError(f"vLLM reported no {name} (log stats disabled?)")


def histogram_mean(llm: Any, name: str, before: tuple[float, int]) -> float:
    """Mean of the observations of `name` since `before` (a `histogram_totals` result)."""
    total, count = histogram_totals(llm, name)
    return (total - before[0]) / (count - before[1])


def time_decoder_layers(llm: Any) -> Callable[[], float]:
    """Start summing, inside the engine's worker, the wall time of the language model's decoder
    layers (first layer's input to last layer's output: what ILP shortens; the vision encoder,
    embeddings and LM head excluded). Returns a function reading the total so far, in seconds."""
    llm.apply_model(_install_layer_timer)
    return lambda: llm.apply_model(_layer_seconds)[0]


def _decoder_layers(model: Any) -> Any:
    return model.language_model.model.layers


def _install_layer_timer(model: Any) -> None:
    layers = _decoder_layers(model)
    if hasattr(layers, "bench_seconds"):
        return
    layers.bench_seconds = 0.0
    started: list[float] = []

    def start(module: Any, args: Any) -> None:
        started.append(time.perf_counter())

    def stop(module: Any, args: Any, output: Any) -> None:
        layers.bench_seconds += time.perf_counter() - started.pop()

    layers[0].register_forward_pre_hook(start)
    layers[len(layers) - 1].register_forward_hook(stop)


def _layer_seconds(model: Any) -> float:
    return float(_decoder_layers(model).bench_seconds)
