"""CROP against what users run today, on one machine in one run, over a concurrency sweep.

    python -m loadtest.bench_compare [--arch qwen2_5_vl] [--size bench] [--concurrency 1,2,4,8]

Starts, on loopback: stock `vllm serve` (vLLM's default configuration, the plugin not loaded),
`vllm serve` with CROP as README tells users to run it, and the gateway in front of it with a
YOLO-World localizer (`loadtest.compare.sweep`). Then, at each concurrency (a closed loop of
that many streaming clients, a fresh image per request), it sends the same image questions as:

  stock vLLM        the full image to stock vLLM
  CROP off          the full image through the gateway, `crop.mode` off
  PLC               through the gateway, PLC on a client-given quarter region
  ILP, PLC+ILP      as PLC, with ILP at the plugin's layer K
  downscale         stock vLLM with the image shrunk to PLC's visual-token budget (what users
                    do today); only for dynamic-resolution models (not LLaVA-1.5)
  PLC (localizer), PLC+ILP (localizer)
                    that pruning on the region the localizer finds (its cost included),
                    reported apart

Prints, per row and concurrency, the throughput relative to stock next to the layer-weighted
ideal, the bound that what pruning cannot shrink (decode, time outside the engine) leaves to it,
and at one client where a request's time goes (`loadtest.compare.report`). Writes table.txt,
results.json, results.csv and PNG plots to --out. The checkpoint is the mid-size random `bench`
one (`crop_vllm.testing.tiny_models`; `--size bench-1024` for its hidden-1024 LLM).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from crop_vllm.families import MODEL_TYPES, family
from loadtest.common import BENCH_CACHE, Servers, machine, server_env
from loadtest.compare.plots import plot
from loadtest.compare.report import summary, table, with_speedups, write
from loadtest.compare.sweep import CROP_SETTINGS, start_servers, sweep
from loadtest.compare.workload import CONFIGS, Workload
from server.accounting import ModelGeometry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="qwen2_5_vl", choices=MODEL_TYPES)
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
    parser.add_argument("--cache", type=Path, default=BENCH_CACHE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from crop_vllm.testing.tiny_models import build_tiny_model

    model = Path(
        args.model
        or build_tiny_model(args.arch, args.cache / f"{args.arch}-{args.size}", args.size)
    )
    geometry = ModelGeometry.load(str(model), CROP_SETTINGS, family(args.arch).remote_code)
    workload = Workload(geometry, args.image_size, args.max_tokens)
    logs = args.out / "logs"  # the servers' logs, kept for post-mortems
    logs.mkdir(exist_ok=True)
    before = machine()
    with Servers(logs, server_env()) as servers:
        try:
            urls = start_servers(servers, args, model)
            result = asyncio.run(sweep(args, workload, urls))
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"benchmark failed: {exc}\nserver logs: {logs}") from exc
    rows = with_speedups(
        [summary(level, workload) for level in result.levels],
        layers=geometry.kv_shape.num_layers,
        ilp_layer=CROP_SETTINGS.ilp_layer,
    )
    down = workload.downscale
    downscale = (
        f"downscale {down.width}x{down.height} ({down.visual_tokens} visual tokens vs PLC's "
        f"{down.budget})"
        if down
        else "no downscale"
    )
    header = (
        f"{model.name} (random weights), {args.image_size}x{args.image_size} images, quarter "
        f"region, outside stride {CROP_SETTINGS.outside_stride}, {args.max_tokens} output "
        f"tokens, localizer {args.localizer_yaml} at {args.localizer_imgsz} px on CPU; ILP at "
        f"layer {CROP_SETTINGS.ilp_layer} of {geometry.kv_shape.num_layers}; {downscale}; "
        f"before: {before}; after: load average {os.getloadavg()[0]:.1f}"
    )
    text = table(rows, result.unavailable, header)
    print("\n" + text)
    (args.out / "table.txt").write_text(text + "\n")
    write(args.out, header, rows, result.levels, result.unavailable)
    for path in plot(rows, args.out, header):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
