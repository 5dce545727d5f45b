"""The benchmarks' own arithmetic: the comparison's downscale baseline and ratio columns, the
KV-bound benchmark's pooling of rounds.

(The benchmarks themselves start several servers and run for minutes: they are run by hand,
`python -m loadtest.bench_compare` / `loadtest.bench_kv`, not in CI.)
"""

from __future__ import annotations

import math

import pytest

from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings
from loadtest import bench_kv
from loadtest.common import QUARTER, Sample
from loadtest.compare.report import with_speedups
from loadtest.compare.workload import Workload
from server.accounting import ModelGeometry


def workload(checkpoint, size: int = 448) -> Workload:
    return Workload(ModelGeometry.load(str(checkpoint), CropSettings()), size, max_tokens=8)


def test_downscale_is_the_largest_size_within_plcs_token_budget(tiny_checkpoint):
    qwen = workload(tiny_checkpoint("qwen2_5_vl"))
    down = qwen.downscale

    def full(side: int) -> int:
        return qwen.geometry.image_tokens(side, side, None, CropMode.OFF).full

    plc = qwen.geometry.image_tokens(448, 448, Region(*QUARTER), CropMode.PLC).after_plc
    assert down.budget == plc
    assert down.visual_tokens == full(down.width) <= plc
    assert full(down.width + 1) > plc


def test_downscale_does_not_apply_to_fixed_resolution_models(tiny_checkpoint):
    assert workload(tiny_checkpoint("llava")).downscale is None


def row(config: str, concurrency: int, req_per_s: float, prompt: int, visual: int, kept: int):
    return {
        "config": config,
        "concurrency": concurrency,
        "req_per_s": req_per_s,
        "prompt_tokens": prompt,
        "visual_tokens": visual,
        "visual_after_ilp": kept,
        "fixed_share": 0.5,
    }


def test_speedups_are_relative_to_stock_at_the_same_concurrency():
    rows = [
        row("stock vLLM", 1, 2.0, 600, 500, 500),
        row("stock vLLM", 4, 4.0, 600, 500, 500),
        row("PLC", 4, 10.0, 200, 100, 100),
        row("PLC", 8, 12.0, 200, 100, 100),
    ]
    plc_at_4, plc_at_8 = with_speedups(rows, layers=12, ilp_layer=2)[2:]
    assert (plc_at_4["speedup"], plc_at_4["ideal_speedup"]) == (2.5, 3.0)
    assert math.isnan(plc_at_8["speedup"])  # no stock run at that concurrency


def test_ideal_speedup_of_ilp_weighs_dropped_tokens_by_the_layers_before_k():
    stock = row("stock vLLM", 1, 1.0, 600, 500, 500)
    ilp = row("ILP", 1, 1.0, 600, 500, 200)  # 300 visual tokens dropped at layer 2 of 12
    with_speedups([stock, ilp], layers=12, ilp_layer=2)
    assert ilp["ideal_speedup"] == (12 * 600) / (12 * 600 - 10 * 300)


def test_the_bound_is_the_ideal_on_the_share_of_stocks_time_that_pruning_can_shrink():
    stock = row("stock vLLM", 1, 1.0, 600, 500, 500)  # half its time is fixed
    plc = row("PLC", 1, 1.0, 200, 100, 100)
    with_speedups([stock, plc], layers=12, ilp_layer=2)
    assert plc["bound"] == pytest.approx(1 / (0.5 + 0.5 / 3.0))
    assert plc["bound"] < plc["ideal_speedup"]


def test_stock_rows_without_usage_count_no_ilp_drop():
    stock = row("stock vLLM", 1, 1.0, 600, float("nan"), float("nan"))
    with_speedups([stock], layers=12, ilp_layer=2)
    assert stock["ideal_speedup"] == 1.0


def test_kv_benchmark_pools_a_rows_rounds_into_one_figure_each(tiny_checkpoint):
    args = bench_kv.parse_args([])
    stock = bench_kv.Row(args, tiny_checkpoint("llava"), "stock")
    first = bench_kv.Window([Sample(2.0, 0.5, 100, 11)], 4.0, [0.0, 2.0, 4.0], 1.0)
    second = bench_kv.Window(
        [Sample(3.0, 1.0, 100, 11), Sample(1.1, 0.1, 100, 11)], 2.0, [3.0], 2.0
    )

    pooled = bench_kv.result(stock, 16, [first, second])

    assert pooled.requests == 3 and pooled.throughput == pytest.approx(3 / 6.0)
    # The idle sample (0 running) is left out of the mean.
    assert pooled.running_mean == pytest.approx(3.0) and pooled.running_max == 4.0
    assert pooled.preemptions == 3.0
    assert pooled.itl_p50 == pytest.approx(0.15)  # (2.0 - 0.5) / 10, (3.0 - 1.0) / 10, 0.1
