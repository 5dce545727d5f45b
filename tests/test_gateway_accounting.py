"""`usage.crop` counts per mode, from the plugin's own geometry (no engine needed)."""

from __future__ import annotations

import pytest

from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings
from server.accounting import ImageTokens, ModelGeometry

QUARTER = Region(0.0, 0.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def geometry(tiny_checkpoint) -> ModelGeometry:
    return ModelGeometry.load(str(tiny_checkpoint("llava")), CropSettings(enable_ilp=True))


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # Tiny LLaVA, 8x8 grid: the quarter keeps 16 cells; PLC pools the other 48 into 3 tokens.
        (CropMode.OFF, ImageTokens(64, 64, 64)),
        (CropMode.PLC, ImageTokens(64, 19, 19)),
        (CropMode.ILP, ImageTokens(64, 64, 16)),
        (CropMode.PLC_ILP, ImageTokens(64, 19, 16)),
    ],
)
def test_each_mode_reports_full_prefilled_and_kept_tokens(geometry, mode, expected):
    assert geometry.image_tokens(224, 160, QUARTER, mode) == expected


def test_an_image_without_a_region_keeps_everything(geometry):
    assert geometry.image_tokens(224, 160, None, CropMode.PLC_ILP) == ImageTokens(64, 64, 64)


def test_the_engine_loads_the_crop_architecture_with_the_gateways_settings(geometry):
    overrides = geometry.engine_hf_overrides()
    assert overrides["architectures"] == ["CropLlavaForConditionalGeneration"]
    assert overrides["crop_enable_ilp"] is True
    assert CropSettings.from_hf_config(geometry.hf_config) == CropSettings(enable_ilp=True)
