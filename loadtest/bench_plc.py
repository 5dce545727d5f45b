"""PLC benchmark: the same image+question batch through vLLM with and without PLC, one run.

    python -m loadtest.bench_plc [--arch llava] [--requests 24] [--repeats 3]

Builds (once, cached) a mid-size random checkpoint (`size="bench"`), starts one CROP engine and
times the batch with `crop_mode` off and with a quarter-image region (outside stride 4),
alternating the two so both see the same machine state. Each request decodes one token.
Two times are reported: the engine's prefill time per request (vLLM's own
`vllm:request_prefill_time_seconds`, vision encoder included: PLC does not shrink it) and the
batch's wall time, which adds per-request work outside the model (image preprocessing, hashing,
transfer) that no pruning changes. Ideal speedup is the ratio of prefilled tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

from crop_vllm.geometry import num_image_tokens
from crop_vllm.layout import PLCSettings, Region
from loadtest.common import QUARTER
from loadtest.prefill import (
    PREFILL_SECONDS,
    add_workload_arguments,
    bench_engine,
    histogram_mean,
    histogram_totals,
    image_requests,
    workload_grids,
)


def run_batch(llm, requests) -> tuple[float, float, int]:
    """(wall time, mean engine prefill time per request, prompt tokens prefilled) of a batch."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=1)
    before = histogram_totals(llm, PREFILL_SECONDS)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    wall = time.perf_counter() - start
    prefill = histogram_mean(llm, PREFILL_SECONDS, before)
    return wall, prefill, sum(len(o.prompt_token_ids) for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description="PLC vs baseline prefill on CPU")
    add_workload_arguments(parser, requests=24)
    args = parser.parse_args()
    llm, checkpoint, config = bench_engine(args)

    def batch(seed: int, region: list[float] | None):
        return image_requests(args, seed, None if region is None else {"crop_regions": [region]})

    run_batch(llm, batch(10_000, None))  # warm-up
    walls: dict[str, list[float]] = {"baseline": [], "plc": []}
    prefills: dict[str, list[float]] = {"baseline": [], "plc": []}
    tokens: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name, region in (("baseline", None), ("plc", QUARTER)):
            wall, prefill, prefilled = run_batch(llm, batch(repeat, region))
            walls[name].append(wall)
            prefills[name].append(prefill)
            tokens[name] = prefilled

    grids = workload_grids(args, checkpoint, config)
    visual_full = num_image_tokens(grids, None, PLCSettings())
    visual_kept = num_image_tokens(grids, Region(*QUARTER), PLCSettings())

    print(
        f"\nPLC benchmark: {args.arch} bench checkpoint, {args.requests} requests x "
        f"{args.repeats} repeats, {args.image_size}px images, quarter region, stride 4, CPU"
    )
    wall = {name: statistics.median(values) for name, values in walls.items()}
    prefill = {name: statistics.median(values) for name, values in prefills.items()}
    header = ("", "visual/img", "prefill tok", "prefill s/req", "wall s", "tok/s (wall)")
    print("{:10} {:>10} {:>12} {:>14} {:>8} {:>13}".format(*header))
    for name, visual in (("baseline", visual_full), ("plc", visual_kept)):
        print(
            f"{name:10} {visual:>10} {tokens[name]:>12} {prefill[name]:>14.3f} "
            f"{wall[name]:>8.3f} {tokens[name] / wall[name]:>13.0f}"
        )
    ideal = tokens["baseline"] / tokens["plc"]
    for label, times in (("engine prefill", prefill), ("wall", wall)):
        measured = times["baseline"] / times["plc"]
        print(
            f"{label:>14}: ideal {ideal:.2f}x  measured {measured:.2f}x  "
            f"measured/ideal {measured / ideal:.1%}"
        )
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
