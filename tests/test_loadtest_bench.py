"""The comparison benchmark's own arithmetic: the downscale baseline and the speedup columns.

(The benchmark itself starts three servers and runs for minutes: it is run by hand, see
`loadtest/bench_compare.py`, not in CI.)
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings
from server.accounting import ModelGeometry

_SPEC = importlib.util.spec_from_file_location(
    "bench_compare", Path(__file__).resolve().parents[1] / "loadtest" / "bench_compare.py"
)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_compare"] = bench
_SPEC.loader.exec_module(bench)


@pytest.fixture(scope="module")
def qwen_geometry(tiny_checkpoint) -> tuple[str, ModelGeometry]:
    model = str(tiny_checkpoint("qwen2_5_vl"))
    return model, ModelGeometry.load(model, CropSettings())


def test_downscale_is_the_largest_size_within_plcs_token_budget(qwen_geometry):
    model, geometry = qwen_geometry
    width, height, tokens, budget = bench.downscaled_size(model, 448, 448)

    def full(w: int, h: int) -> int:
        return geometry.image_tokens(w, h, None, CropMode.OFF).full

    assert budget == geometry.image_tokens(448, 448, Region(*bench.QUARTER), CropMode.PLC).after_plc
    assert tokens == full(width, height) <= budget
    assert full(width + 1, height + 1) > budget


def test_downscale_does_not_apply_to_fixed_resolution_models(tiny_checkpoint):
    assert bench.downscaled_size(str(tiny_checkpoint("llava")), 448, 448) is None


def row(config: str, concurrency: int, req_per_s: float, prompt: int, visual: int, kept: int):
    return {
        "config": config,
        "concurrency": concurrency,
        "req_per_s": req_per_s,
        "prompt_tokens": prompt,
        "visual_tokens": visual,
        "visual_after_ilp": kept,
    }


def test_speedups_are_relative_to_stock_at_the_same_concurrency():
    rows = [
        row("stock vLLM", 1, 2.0, 600, 500, 500),
        row("stock vLLM", 4, 4.0, 600, 500, 500),
        row("PLC", 4, 10.0, 200, 100, 100),
        row("PLC", 8, 12.0, 200, 100, 100),
    ]
    plc_at_4, plc_at_8 = bench.with_speedups(rows, layers=12, ilp_layer=2)[2:]
    assert (plc_at_4["speedup"], plc_at_4["ideal_speedup"]) == (2.5, 3.0)
    assert math.isnan(plc_at_8["speedup"])  # no stock run at that concurrency


def test_ideal_speedup_of_ilp_weighs_dropped_tokens_by_the_layers_before_k():
    stock = row("stock vLLM", 1, 1.0, 600, 500, 500)
    ilp = row("ILP", 1, 1.0, 600, 500, 200)  # 300 visual tokens dropped at layer 2 of 12
    bench.with_speedups([stock, ilp], layers=12, ilp_layer=2)
    assert ilp["ideal_speedup"] == (12 * 600) / (12 * 600 - 10 * 300)


def test_stock_rows_without_usage_count_no_ilp_drop():
    stock = row("stock vLLM", 1, 1.0, 600, float("nan"), float("nan"))
    bench.with_speedups([stock], layers=12, ilp_layer=2)
    assert stock["ideal_speedup"] == 1.0
