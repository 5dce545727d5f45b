"""Validation of CROP's per-request options and server settings."""

import pytest

from crop_vllm.layout import CropMode, Region
from crop_vllm.options import (
    CropRequestError,
    CropSettings,
    decode_plans,
    encode_plans,
    parse_request,
)

SETTINGS = CropSettings()


def test_no_crop_kwargs_means_no_plan():
    assert parse_request({}, 2, SETTINGS) is None


def test_regions_default_to_the_server_default_mode():
    plans = parse_request({"crop_regions": [[0, 0, 0.5, 0.5]]}, 1, SETTINGS)
    assert plans is not None and plans[0].mode is CropMode.PLC


def test_null_region_leaves_that_image_alone():
    plans = parse_request({"crop_regions": [None, [0, 0, 1, 0.5]]}, 2, SETTINGS)
    assert plans[0].region is None and plans[1].region == Region(0, 0, 1, 0.5)


def test_mode_off_disables_pruning_even_with_regions():
    assert parse_request({"crop_mode": "off", "crop_regions": [[0, 0, 1, 1]]}, 1, SETTINGS) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_regions": [[0, 0, 1.5, 1]]}, "in \\[0, 1\\]"),
        ({"crop_regions": [[0.5, 0, 0.2, 1]]}, "x0 <= x1"),
        ({"crop_regions": [[0, 0, 1]]}, "x0, y0, x1, y1"),
        ({"crop_regions": [["a", 0, 1, 1]]}, "numbers"),
        ({"crop_regions": [[0, 0, 1, 1], [0, 0, 1, 1]]}, "2 entries but the request has 1"),
        ({"crop_regions": {"a": 1}}, "must be a list"),
        ({"crop_mode": "zoom"}, "crop_mode must be one of"),
        ({"crop_mode": "ilp", "crop_regions": [[0, 0, 1, 1]]}, "not supported"),
    ],
)
def test_invalid_options_raise_a_clear_error(kwargs, message):
    with pytest.raises(CropRequestError, match=message):
        parse_request(kwargs, 1, SETTINGS)


def test_plans_round_trip_through_the_canonical_kwargs():
    plans = parse_request({"crop_regions": [[0.1, 0.2, 0.3, 0.4], None]}, 2, SETTINGS)
    assert decode_plans(encode_plans(plans)) == plans


def test_settings_come_from_hf_config_attributes():
    class Config:
        crop_outside_stride = 2
        crop_drop_outside = True

    settings = CropSettings.from_hf_config(Config())
    assert settings.plc.outside_stride == 2 and settings.plc.drop_outside


def test_invalid_setting_is_refused():
    class Config:
        crop_outside_stride = 0

    with pytest.raises(ValueError, match="outside_stride"):
        CropSettings.from_hf_config(Config())
