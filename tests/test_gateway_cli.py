"""`crop-server serve` flags become the gateway's configuration (no server is started here)."""

from __future__ import annotations

import ipaddress

import pytest

from crop_localizer import LocalizerKind
from crop_vllm.layout import CropMode
from server.cli import build_parser, config_from_args


def config(*flags: str):
    return config_from_args(build_parser().parse_args(["serve", "--model", "some/model", *flags]))


def test_flags_set_crop_defaults_limits_keys_and_engine_args():
    built = config(
        "--crop-mode", "off",
        "--crop-default-mode", "plc",
        "--crop-outside-stride", "2",
        "--crop-drop-outside",
        "--crop-enable-ilp",
        "--max-images", "3",
        "--max-concurrent-requests", "5",
        "--api-key", "k1",
        "--allow-image-network", "10.0.0.0/8",
        "--no-public-image-urls",
        "--engine-arg", "max_model_len=4096",
        "--engine-arg", "dtype=bfloat16",
    )  # fmt: skip
    assert built.crop.request_mode == "off"
    assert built.crop.default_mode is CropMode.PLC
    assert built.crop.hf_overrides()["crop_outside_stride"] == 2
    assert built.crop.hf_overrides()["crop_drop_outside"] is True
    assert built.crop.hf_overrides()["crop_enable_ilp"] is True
    assert (built.limits.max_images, built.limits.max_concurrent_requests) == (3, 5)
    assert built.api_keys == ("k1",)
    assert built.images.allowed_networks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert not built.images.allow_public
    assert built.engine_args == {"max_model_len": 4096, "dtype": "bfloat16"}
    assert built.model_name == "some/model"


def test_the_localizer_is_none_without_weights_and_yolo_world_with_them(tmp_path):
    assert config().localizer.kind is LocalizerKind.NONE
    weights = tmp_path / "yolov8s-worldv2.pt"
    with_weights = config("--localizer-weights", str(weights))
    assert with_weights.localizer.kind is LocalizerKind.YOLO_WORLD
    assert with_weights.localizer.weights == weights


def test_localizer_flags_set_its_input_size_threshold_and_batching():
    built = config(
        "--localizer-imgsz", "320",
        "--localizer-conf", "0.1",
        "--localizer-max-batch", "2",
        "--localizer-max-wait-ms", "0",
    ).localizer  # fmt: skip
    assert (built.imgsz, built.conf, built.max_batch, built.max_wait_ms) == (320, 0.1, 2, 0.0)


@pytest.mark.parametrize(
    ("flags", "enabled"),
    [((), False), (("--crop-enable-ilp",), True), (("--crop-enable-ilp=true",), True),
     (("--crop-enable-ilp=false",), False)],
)  # fmt: skip
def test_ilp_is_enabled_by_the_bare_flag_or_a_true_value(flags, enabled):
    assert config(*flags).crop.enable_ilp is enabled


def test_an_ilp_flag_value_that_is_not_a_boolean_is_refused(capsys):
    with pytest.raises(SystemExit):
        config("--crop-enable-ilp=maybe")
    assert "expected true or false" in capsys.readouterr().err


def test_api_keys_also_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CROP_API_KEYS", "a, b")
    assert config("--api-key", "c").api_keys == ("c", "a", "b")


def test_a_remote_engine_without_backends_is_refused_before_starting():
    with pytest.raises(ValueError, match="backend"):
        config("--engine", "remote")
