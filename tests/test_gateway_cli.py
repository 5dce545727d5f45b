"""`crop-server serve` flags become the gateway's configuration (no server is started here)."""

from __future__ import annotations

import ipaddress

import pytest

from crop_localizer import LocalizerConfig, LocalizerKind
from crop_vllm.layout import CropMode
from crop_vllm.options import CropSettings, setting_fields
from server.cli import build_parser, config_from_args
from server.config import Limits
from server.flags import crop_setting_args, crop_settings
from server.images import ImageLimits


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
    assert built.crop.settings == CropSettings(
        default_mode=CropMode.PLC, outside_stride=2, drop_outside=True, enable_ilp=True
    )
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
    assert config(*flags).crop.settings.enable_ilp is enabled


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


def test_without_flags_the_configuration_is_the_dataclasses_defaults():
    built = config()
    assert built.crop.settings == CropSettings()
    assert built.crop.request_mode == "auto"
    assert built.limits == Limits()
    assert built.images == ImageLimits()
    assert built.localizer == LocalizerConfig(kind=LocalizerKind.NONE)
    assert (built.engine, built.remote_retry_interval_s) == ("embedded", 5.0)
    assert built.limits.default_max_tokens is None  # as vLLM: the rest of the context


def test_every_plugin_setting_is_a_crop_flag_with_the_plugins_default_and_help(capsys):
    assert crop_settings(build_parser().parse_args(["serve"])) == CropSettings()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for spec in setting_fields():
        assert f"--crop-{spec.name.replace('_', '-')}" in help_text
        assert " ".join(spec.help.split()) in help_text


def test_a_setting_the_plugin_refuses_is_refused_with_its_reason():
    with pytest.raises(ValueError, match="crop_enable_ilp"):
        config("--crop-default-mode", "plc+ilp")


def test_remote_engine_settings_come_from_their_flags():
    built = config("--engine", "remote", "--backend", "http://a:1", "--backend-retry-interval", "2")
    assert (built.engine, built.remote_urls, built.remote_retry_interval_s) == (
        "remote",
        ("http://a:1",),
        2.0,
    )


def test_the_flags_of_a_settings_object_give_a_gateway_exactly_those_settings():
    settings = CropSettings(
        inside_stride=2,
        outside_stride=8,
        drop_outside=True,
        ilp_layer=3,
        enable_ilp=True,
        ilp_compact_kv=False,
        default_mode=CropMode.PLC_ILP,
    )
    assert config(*crop_setting_args(settings)).crop.settings == settings
