"""PLC benchmark: the same image+question batch through vLLM with and without PLC, one run.

    python -m crop_vllm.bench.plc [--arch llava] [--requests 24] [--repeats 3]

Builds (once, cached) a mid-size random checkpoint (`size="bench"`), starts one CROP engine and
times the batch with `crop_mode` off and with a quarter-image region (outside stride 4),
alternating the two so both see the same machine state. Each request decodes one token, so the
time is prefill (vision encoder included: PLC does not shrink it). Ideal speedup is the ratio
of prefilled tokens; measured speedup is the ratio of wall times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

QUARTER = [0.0, 0.0, 0.5, 0.5]
PROMPTS = {
    "llava": "USER: <image>\n{q} ASSISTANT:",
    "llava_next": "USER: <image>\n{q} ASSISTANT:",
    "qwen2_5_vl": (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}
QUESTIONS = [
    "What color is the umbrella the woman holds?",
    "How many dogs are there?",
    "What is written on the sign?",
    "Is the cup on the left of the laptop?",
]


def images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(count)
    ]


def run_batch(llm, requests) -> tuple[float, int]:
    """Wall time of one batch and the prompt tokens it prefilled."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=1)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.prompt_token_ids) for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description="PLC vs baseline prefill on CPU")
    parser.add_argument("--arch", default="llava", choices=sorted(PROMPTS))
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/crop-serving/bench")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

    from transformers import AutoConfig
    from vllm import LLM

    from crop_vllm import CROP_OF
    from crop_vllm.testing.tiny_models import build_tiny_model

    checkpoint = build_tiny_model(args.arch, args.cache / f"{args.arch}-bench", size="bench")
    config = AutoConfig.from_pretrained(checkpoint)
    llm = LLM(
        model=str(checkpoint),
        hf_overrides={"architectures": [CROP_OF[config.architectures[0]]]},
        dtype="float32",
        enforce_eager=True,
        max_model_len=4096,
        max_num_seqs=args.requests,
        max_num_batched_tokens=8192,
        # Every request carries a fresh image: no processor or prefix cache hits.
        mm_processor_cache_gb=0,
        enable_prefix_caching=False,
        seed=0,
    )

    def batch(seed: int, region: list[float] | None):
        pictures = images(args.requests, args.image_size, seed)
        requests = []
        for index, picture in enumerate(pictures):
            question = QUESTIONS[index % len(QUESTIONS)]
            request = {
                "prompt": PROMPTS[args.arch].format(q=question),
                "multi_modal_data": {"image": picture},
            }
            if region is not None:
                request["mm_processor_kwargs"] = {"crop_regions": [region]}
            requests.append(request)
        return requests

    run_batch(llm, batch(10_000, None))  # warm-up
    times: dict[str, list[float]] = {"baseline": [], "plc": []}
    tokens: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name, region in (("baseline", None), ("plc", QUARTER)):
            elapsed, prefilled = run_batch(llm, batch(repeat, region))
            times[name].append(elapsed)
            tokens[name] = prefilled

    (probe_base,) = llm.generate(batch(0, None)[:1], use_tqdm=False)
    (probe_plc,) = llm.generate(batch(0, QUARTER)[:1], use_tqdm=False)
    image_token = config.image_token_id
    visual_full = list(probe_base.prompt_token_ids).count(image_token)
    visual_kept = list(probe_plc.prompt_token_ids).count(image_token)

    print(
        f"\nPLC benchmark: {args.arch} bench checkpoint, {args.requests} requests x "
        f"{args.repeats} repeats, {args.image_size}px images, quarter region, stride 4, CPU"
    )
    print(f"{'':10} {'visual/img':>10} {'prefill tok':>12} {'wall s (median)':>16} {'tok/s':>9}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, visual in (("baseline", visual_full), ("plc", visual_kept)):
        rate = tokens[name] / medians[name]
        print(f"{name:10} {visual:>10} {tokens[name]:>12} {medians[name]:>16.3f} {rate:>9.0f}")
    ideal = tokens["baseline"] / tokens["plc"]
    measured = medians["baseline"] / medians["plc"]
    print(f"ideal speedup {ideal:.2f}x  measured {measured:.2f}x  "
          f"measured/ideal {measured / ideal:.1%}")  # fmt: skip
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
