"""ILP benchmark: baseline, PLC, ILP and PLC+ILP side by side in one engine, one run.

    python -m crop_vllm.bench.ilp [--arch llava] [--requests 16] [--repeats 3] [--decode 16]

Same mid-size random checkpoint (`size="bench"`) and workload as `crop_vllm.bench.plc`: a batch
of fresh 448px images with questions and a quarter-image region. One CROP engine with ILP on
(`crop_enable_ilp`, eager, no prefix caching) serves all four modes, alternated per repeat so
that each sees the same machine state.

- prefill s: wall time of the batch with one output token (vision encoder included);
- decode ms/step: (wall time with 1 + `--decode` tokens - prefill time) / `--decode`;
- layer-weighted tokens: sum over requests of K * prefilled + (L - K) * kept-after-K tokens
  (what the decoder layers process in prefill), relative to the baseline;
- KV blocks: blocks the batch's prompts occupy (ILP keeps a block per logical token in every
  layer, so it saves compute, not KV memory);
- ideal speedup = baseline layer-weighted tokens / mode's; measured = baseline prefill / mode's.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from crop_vllm.bench.workload import QUARTER, add_workload_arguments, bench_engine, image_requests

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

    from transformers import AutoImageProcessor

    from crop_vllm.geometry import image_grids
    from crop_vllm.ilp.plan import image_keep_mask
    from crop_vllm.layout import CropMode, PLCSettings, Region
    from crop_vllm.options import ImagePlan

    llm, checkpoint, config = bench_engine(
        args, crop_enable_ilp=True, crop_ilp_layer=args.ilp_layer
    )
    num_layers = config.text_config.num_hidden_layers
    block_size = llm.llm_engine.vllm_config.cache_config.block_size

    def batch(seed: int, mode: str):
        crop = None if mode == "off" else {"crop_mode": mode, "crop_regions": [QUARTER]}
        return image_requests(args, seed, crop)

    timed(llm, batch(10_000, "ilp"), 2)  # warm-up
    prefill: dict[str, list[float]] = {m: [] for m in MODES}
    decode: dict[str, list[float]] = {m: [] for m in MODES}
    prompts: dict[str, list[int]] = {}
    for repeat in range(args.repeats):
        for mode in MODES:
            requests = batch(repeat, mode)
            first, outputs = timed(llm, requests, 1)
            total, _ = timed(llm, requests, 1 + args.decode)
            prefill[mode].append(first)
            decode[mode].append((total - first) / args.decode)
            prompts[mode] = [len(o.prompt_token_ids) for o in outputs]

    processor = AutoImageProcessor.from_pretrained(checkpoint).to_dict()
    grids = image_grids(config, processor, args.image_size, args.image_size)
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
    base_prefill = statistics.median(prefill["off"])
    print(
        f"\nILP benchmark: {args.arch} bench checkpoint ({num_layers} LLM layers, K="
        f"{args.ilp_layer}), {args.requests} requests x {args.repeats} repeats, "
        f"{args.image_size}px, quarter region, stride 4, CPU, block size {block_size}"
    )
    header = (
        f"{'mode':8} {'prompt tok':>10} {'kept@K':>7} {'LW tok':>8} {'LW %':>6} "
        f"{'KV blk':>6} {'prefill s':>9} {'decode ms':>9} {'ideal':>6} {'measured':>8} {'m/i':>6}"
    )
    print(header)
    for mode in MODES:
        lw = layer_weighted(mode)
        blocks = sum(math.ceil((p + 1 + args.decode) / block_size) for p in prompts[mode])
        kept = sum(p - dropped(mode) for p in prompts[mode])
        median_prefill = statistics.median(prefill[mode])
        ideal, measured = base_lw / lw, base_prefill / median_prefill
        print(
            f"{mode:8} {sum(prompts[mode]):>10} {kept:>7} "
            f"{lw:>8} {lw / base_lw:>6.1%} {blocks:>6} {median_prefill:>9.3f} "
            f"{1000 * statistics.median(decode[mode]):>9.1f} {ideal:>5.2f}x {measured:>7.2f}x "
            f"{measured / ideal:>6.1%}"
        )
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":
    main()
