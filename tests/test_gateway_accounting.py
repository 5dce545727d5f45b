"""`usage.crop` counts per mode and the KV cache a request held, from the plugin's own geometry
and allocator arithmetic (no engine needed)."""

from __future__ import annotations

import json

import pytest

from crop_vllm.families import MODEL_TYPES, family
from crop_vllm.ilp.plan import kv_blocks
from crop_vllm.layout import CropMode, Region
from crop_vllm.options import CropSettings
from server.accounting import ImageTokens, ModelGeometry
from server.engines import KvCacheFacts

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


# --------------------------------------------------------------------------------------------
# The KV cache a request held
# --------------------------------------------------------------------------------------------

FLOAT32_BLOCKS_OF_32 = KvCacheFacts(block_size=32, cache_dtype="auto", model_dtype="float32")


def test_a_layer_block_has_the_bytes_of_vllms_page_for_one_layer(geometry):
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    shape = geometry.kv_shape
    for dtype, element in [(torch.float32, 4), (torch.bfloat16, 2), (torch.uint8, 1)]:
        page = FullAttentionSpec(
            block_size=32, num_kv_heads=shape.num_kv_heads, head_size=shape.head_dim, dtype=dtype
        )
        assert shape.layer_block_bytes(32, element) == page.page_size_bytes


def test_an_ilp_request_holds_the_formulas_layer_blocks_with_the_saving(geometry):
    tokens, dropped = 100, 48
    kv = geometry.kv_usage(tokens, dropped, FLOAT32_BLOCKS_OF_32)
    layers, k = geometry.kv_shape.num_layers, geometry.settings.ilp_layer
    assert (kv.layer_blocks_without_saving, kv.layer_blocks_with_saving) == kv_blocks(
        tokens, dropped, 32, layers, k
    )
    assert kv.layer_blocks_with_saving < kv.layer_blocks_without_saving
    layer_block = geometry.kv_shape.layer_block_bytes(32, 4)
    assert kv.bytes_with_saving == kv.layer_blocks_with_saving * layer_block
    assert kv.bytes_without_saving == kv.layer_blocks_without_saving * layer_block
    assert kv.saved_fraction == pytest.approx(
        1 - kv.layer_blocks_with_saving / kv.layer_blocks_without_saving
    )


def test_without_compact_kv_ilp_saves_no_kv(tiny_checkpoint):
    settings = CropSettings(enable_ilp=True, ilp_compact_kv=False)
    geometry = ModelGeometry.load(str(tiny_checkpoint("llava")), settings)
    kv = geometry.kv_usage(100, 48, FLOAT32_BLOCKS_OF_32)
    assert kv.dropped_tokens == 0 and kv.saved_fraction == 0
    assert kv.layer_blocks_with_saving == kv.layer_blocks_without_saving


@pytest.mark.parametrize(
    ("facts", "dtype"),
    [
        (KvCacheFacts(32, "fp8"), "fp8"),  # the cache dtype wins
        (KvCacheFacts(32, "auto", "bfloat16"), "bfloat16"),  # else the engine's model dtype
        (KvCacheFacts(32, "auto"), "float32"),  # else the checkpoint's own
    ],
)
def test_the_kv_dtype_is_the_engines_cache_dtype_or_else_the_models(geometry, facts, dtype):
    assert geometry.kv_usage(100, 0, facts).dtype == dtype


def test_a_packed_kv_dtype_reports_layer_blocks_but_no_bytes(geometry):
    kv = geometry.kv_usage(100, 48, KvCacheFacts(32, "nvfp4"))
    assert kv.layer_blocks_with_saving > 0
    assert kv.bytes_with_saving is None and kv.bytes_without_saving is None


@pytest.mark.parametrize("arch", MODEL_TYPES)
def test_the_kv_shape_is_the_language_models_for_every_family(arch, tiny_checkpoint):
    checkpoint = tiny_checkpoint(arch)
    raw = json.loads((checkpoint / "config.json").read_text())
    language = raw.get("llm_config") or raw["text_config"]
    geometry = ModelGeometry.load(str(checkpoint), CropSettings(), family(arch).remote_code)
    shape = geometry.kv_shape
    assert shape.num_layers == language["num_hidden_layers"]
    assert shape.num_kv_heads == language["num_key_value_heads"]
    head_dim = (
        language.get("head_dim") or language["hidden_size"] // language["num_attention_heads"]
    )
    assert shape.head_dim == head_dim
