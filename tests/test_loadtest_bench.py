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
from server.accounting import ModelGeometry
from server.config import CropDefaults

_SPEC = importlib.util.spec_from_file_location(
    "bench_compare", Path(__file__).resolve().parents[1] / "loadtest" / "bench_compare.py"
)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_compare"] = bench
_SPEC.loader.exec_module(bench)


@pytest.fixture(scope="module")
def qwen_geometry(tiny_checkpoint) -> tuple[str, ModelGeometry]:
    model = str(tiny_checkpoint("qwen2_5_vl"))
    return model, ModelGeometry.load(model, CropDefaults().hf_overrides())


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


def test_speedups_are_relative_to_stock_at_the_same_concurrency():
    rows = [
        {"config": "stock vLLM", "concurrency": 1, "req_per_s": 2.0, "prompt_tokens": 600},
        {"config": "stock vLLM", "concurrency": 4, "req_per_s": 4.0, "prompt_tokens": 600},
        {"config": "PLC", "concurrency": 4, "req_per_s": 10.0, "prompt_tokens": 200},
        {"config": "PLC", "concurrency": 8, "req_per_s": 12.0, "prompt_tokens": 200},
    ]
    plc_at_4, plc_at_8 = bench.with_speedups(rows)[2:]
    assert (plc_at_4["speedup"], plc_at_4["ideal_speedup"]) == (2.5, 3.0)
    assert math.isnan(plc_at_8["speedup"])  # no stock run at that concurrency
