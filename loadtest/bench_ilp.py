"""ILP benchmark: baseline, PLC, ILP and PLC+ILP side by side in one engine, one run.

    python -m loadtest.bench_ilp [--arch llava] [--requests 16] [--repeats 3] [--decode 16]

Same mid-size random checkpoint (`size="bench"`) and workload as `loadtest.bench_plc`: a batch
of fresh 448px images with questions and a quarter-image region. One CROP engine with ILP on
(`crop_enable_ilp`) serves all four modes, alternated per repeat so that each sees the same
machine state. The engine runs eager: the layer timer below is a pair of forward hooks, which a
compiled model would trace away (the HTTP benchmarks in `loadtest/` run compiled).

- layers s: time in the decoder layers (first layer's input to last layer's output, summed
  over the batch's prefill steps) for the batch with one output token: what the ideal models;
- engine s: vLLM's mean prefill time per request in that batch (vision encoder included);
  wall s: the batch's wall time (image preprocessing included too);
- decode ms: vLLM's mean time between output tokens, in a second run of the batch with
  1 + `--decode` output tokens;
- layer-weighted tokens: sum over requests of K * prefilled + (L - K) * kept-after-K tokens
  (what the decoder layers process in prefill), relative to the baseline;
- KV layer-blocks: what the batch's requests hold at their last token, one layer's KV for a
  block of tokens each (`crop_vllm.ilp.plan.kv_blocks`, with ILP's KV saving);
- ideal speedup = baseline layer-weighted tokens / mode's; measured = baseline time / mode's,
  for the decoder layers, engine prefill and wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

from loadtest.common import QUARTER
from loadtest.prefill import (
    INTER_TOKEN_SECONDS,
    PREFILL_SECONDS,
    add_workload_arguments,
    bench_engine,
    histogram_mean,
    histogram_totals,
    image_requests,
    num_decoder_layers,
    time_decoder_layers,
    workload_grids,
)

MODES = ("off", "plc", "ilp", "plc+ilp")


def timed(llm, requests, max_tokens: int) -> tuple[float, list]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    return time.perf_counter() - start, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description="ILP vs PLC vs baseline on CPU")
    add_workload_arguments(parser, requests=16)
    parser.add_argument("--decode", type=int, default=16)
    parser.add_argument("--ilp-layer", type=int, default=2)
    args = parser.parse_args()

    from crop_vllm.ilp.plan import image_keep_mask, kv_blocks
    from crop_vllm.layout import CropMode, PLCSettings, Region
    from crop_vllm.options import ImagePlan

    llm, checkpoint, config = bench_engine(
        args, crop_enable_ilp=True, crop_ilp_layer=args.ilp_layer
    )
    num_layers = num_decoder_layers(config)
    block_size = llm.llm_engine.vllm_config.cache_config.block_size

    def batch(seed: int, mode: str):
        crop = None if mode == "off" else {"crop_mode": mode, "crop_regions": [QUARTER]}
        return image_requests(args, seed, crop)

    layer_seconds = time_decoder_layers(llm)
    timed(llm, batch(10_000, "ilp"), 2)  # warm-up
    layers: dict[str, list[float]] = {m: [] for m in MODES}
    wall: dict[str, list[float]] = {m: [] for m in MODES}
    engine: dict[str, list[float]] = {m: [] for m in MODES}
    decode: dict[str, list[float]] = {m: [] for m in MODES}
    prompts: dict[str, list[int]] = {}
    for repeat in range(args.repeats):
        for mode in MODES:
            requests = batch(repeat, mode)
            before, layers_before = histogram_totals(llm, PREFILL_SECONDS), layer_seconds()
            seconds, outputs = timed(llm, requests, 1)
            layers[mode].append(layer_seconds() - layers_before)
            wall[mode].append(seconds)
            engine[mode].append(histogram_mean(llm, PREFILL_SECONDS, before))
            before = histogram_totals(llm, INTER_TOKEN_SECONDS)
            timed(llm, requests, 1 + args.decode)
            decode[mode].append(histogram_mean(llm, INTER_TOKEN_SECONDS, before))
            prompts[mode] = [len(o.prompt_token_ids) for o in outputs]

    grids = workload_grids(args, checkpoint, config)
    region = Region(*QUARTER)

    def dropped(mode: str) -> int:
        if mode not in ("ilp", "plc+ilp"):
            return 0
        mask = image_keep_mask(grids, ImagePlan(CropMode(mode), region), PLCSettings())
        return mask.count(False)

    def layer_weighted(mode: str) -> int:
        k = min(args.ilp_layer, num_layers)
        return sum(k * p + (num_layers - k) * (p - dropped(mode)) for p in prompts[mode])

    base_lw = layer_weighted("off")
    median = {
        name: {m: statistics.median(v) for m, v in times.items()}
        for name, times in (
            ("layers", layers),
            ("wall", wall),
            ("engine", engine),
            ("decode", decode),
        )
    }
    print(
        f"\nILP benchmark: {args.arch} bench checkpoint ({num_layers} LLM layers, K="
        f"{args.ilp_layer}), {args.requests} requests x {args.repeats} repeats, "
        f"{args.image_size}px, quarter region, stride 4, CPU, block size {block_size}"
    )
    print(
        f"{'mode':8} {'prompt':>6} {'kept@K':>6} {'LW tok':>7} {'LW %':>6} {'KV lblk':>7} "
        f"{'layers s':>8} {'eng s':>6} {'wall s':>6} {'dec ms':>6} {'ideal':>6} "
        f"{'layers x':>8} {'m/i':>6} {'eng x':>8} {'m/i':>6} {'wall x':>8} {'m/i':>6}"
    )
    for mode in MODES:
        lw = layer_weighted(mode)
        blocks = sum(
            kv_blocks(p + 1 + args.decode, dropped(mode), block_size, num_layers, args.ilp_layer)[1]
            for p in prompts[mode]
        )
        kept = sum(p - dropped(mode) for p in prompts[mode])
        ideal = base_lw / lw
        speedups = [median[k]["off"] / median[k][mode] for k in ("layers", "engine", "wall")]
        print(
            f"{mode:8} {sum(prompts[mode]):>6} {kept:>6} {lw:>7} {lw / base_lw:>6.1%} "
            f"{blocks:>7} {median['layers'][mode]:>8.3f} {median['engine'][mode]:>6.3f} "
            f"{median['wall'][mode]:>6.3f} {1000 * median['decode'][mode]:>6.1f} {ideal:>5.2f}x "
            + " ".join(f"{x:>7.2f}x {x / ideal:>6.1%}" for x in speedups)
        )
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
