"""`usage.crop.kv` and the `crop_kv_*` metrics on real engines: the KV cache a request held is
the allocator's formula (`crop_vllm.ilp.plan.kv_blocks`, checked against vLLM's allocator in
test_ilp_kv.py) for the engine that served it, embedded or `vllm serve`, whose block size and
KV dtype the gateway reads from the engine itself."""

from __future__ import annotations

import httpx
import pytest
from transformers import AutoConfig

from crop_vllm.ilp.plan import kv_blocks
from crop_vllm.testing.photos import picture
from server.config import CropDefaults
from server.engines import KvCacheFacts
from server.engines.remote import kv_cache_facts
from tests.engine_fixtures import SERVING_BLOCK_SIZE, SERVING_SETTINGS
from tests.gateway_fixtures import QUARTER, Delta, ask, data_url, image_message, scrape

pytestmark = pytest.mark.engine

#: The session's engines run the tiny checkpoint in float32.
FLOAT32_BYTES = 4


@pytest.fixture(scope="module")
def ilp_gateway(start_gateway):
    """A gateway with the embedded engine's own settings (ILP on, with the KV saving)."""
    return start_gateway(crop=CropDefaults(SERVING_SETTINGS))


def expected_kv(model: str, usage, dropped: int) -> dict:
    """What `usage.crop.kv` must say: the formula, in layer-blocks of the engine's 32-token
    blocks and in bytes of the tiny LLaVA's float32 K and V."""
    text = AutoConfig.from_pretrained(model).text_config
    tokens = usage.prompt_tokens + usage.completion_tokens
    without, with_saving = kv_blocks(
        tokens, dropped, SERVING_BLOCK_SIZE, text.num_hidden_layers, SERVING_SETTINGS.ilp_layer
    )
    layer_block = 2 * SERVING_BLOCK_SIZE * text.num_key_value_heads * text.head_dim * FLOAT32_BYTES
    return {
        "block_size": SERVING_BLOCK_SIZE,
        "dtype": "float32",
        "tokens": tokens,
        "dropped_tokens": dropped,
        "layer_blocks_without_saving": without,
        "layer_blocks_with_saving": with_saving,
        "bytes_without_saving": without * layer_block,
        "bytes_with_saving": with_saving * layer_block,
        "saved_fraction": pytest.approx(1 - with_saving / without, abs=1e-6),
    }


def test_an_ilp_request_reports_the_kv_it_held_with_and_without_the_saving(
    ilp_gateway, gateway_model, tiny_tokens
):
    response = ask(
        ilp_gateway,
        [image_message([data_url(picture(90))])],
        crop={"mode": "ilp", "regions": [QUARTER]},
    )
    kv = response.usage.crop["kv"]
    assert kv == expected_kv(
        gateway_model, response.usage, tiny_tokens.full - tiny_tokens.quarter_ilp
    )
    assert kv["layer_blocks_with_saving"] < kv["layer_blocks_without_saving"]


def test_a_streamed_plc_ilp_request_reports_its_kv_in_the_usage_chunk(ilp_gateway, gateway_model):
    stream = ask(
        ilp_gateway,
        [image_message([data_url(picture(91))])],
        crop={"mode": "plc+ilp", "regions": [QUARTER]},
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk for chunk in stream if chunk.usage is not None][-1].usage
    crop = usage.crop
    dropped = crop["visual_tokens_after_plc"] - crop["visual_tokens_after_ilp"]
    assert dropped > 0
    assert crop["kv"] == expected_kv(gateway_model, usage, dropped)


@pytest.mark.parametrize("crop", [{"mode": "off"}, {"mode": "plc", "regions": [QUARTER]}])
def test_requests_without_ilp_report_their_kv_and_no_saving(ilp_gateway, gateway_model, crop):
    response = ask(ilp_gateway, [image_message([data_url(picture(92))])], crop=crop)
    kv = response.usage.crop["kv"]
    assert kv == expected_kv(gateway_model, response.usage, 0)
    assert kv["saved_fraction"] == 0


def test_the_kv_metrics_move_by_what_each_request_reports(ilp_gateway):
    before = scrape(ilp_gateway)
    ilp, plc, text = (
        ask(ilp_gateway, messages, crop=crop).usage.crop["kv"]
        for messages, crop in [
            ([image_message([data_url(picture(93))])], {"mode": "ilp", "regions": [QUARTER]}),
            ([image_message([data_url(picture(94))])], {"mode": "plc", "regions": [QUARTER]}),
            ([{"role": "user", "content": "No image here."}], None),
        ]
    )
    delta = Delta(before, scrape(ilp_gateway))
    for allocation in ("with_saving", "without_saving"):
        held = sum(kv[f"bytes_{allocation}"] for kv in (ilp, plc, text))
        assert delta("crop_kv_bytes_total", allocation=allocation) == held
    # The saved fraction is observed for requests with images: ILP's, and PLC's zero.
    assert delta("crop_kv_saved_fraction_count") == 2
    assert delta("crop_kv_saved_fraction_sum") == pytest.approx(ilp["saved_fraction"])
    assert delta("crop_kv_saved_fraction_bucket", le="0.0") == 1
    assert ilp["saved_fraction"] > 0


def test_through_vllm_serve_the_kv_is_counted_in_the_backends_blocks(
    remote_gateway, vllm_serve, tiny_tokens
):
    (backend,) = httpx.get(remote_gateway.url + "/health").json()["engine"]["backends"]
    # vLLM exports the block size and cache dtype, not the model's dtype: with `auto` the
    # gateway counts in the checkpoint's (float32, which vllm_serve runs).
    assert backend["kv_cache"] == {
        "block_size": SERVING_BLOCK_SIZE,
        "cache_dtype": "auto",
        "model_dtype": None,
    }
    response = ask(
        remote_gateway,
        [image_message([data_url(picture(95))])],
        crop={"mode": "ilp", "regions": [QUARTER]},
    )
    kv = response.usage.crop["kv"]
    assert kv == expected_kv(
        vllm_serve.model, response.usage, tiny_tokens.full - tiny_tokens.quarter_ilp
    )
    assert kv["layer_blocks_with_saving"] < kv["layer_blocks_without_saving"]


def test_a_backend_without_vllms_cache_config_info_gives_no_kv_facts(vllm_serve):
    metrics = httpx.get(vllm_serve.url + "/metrics").text
    assert kv_cache_facts(metrics) == KvCacheFacts(SERVING_BLOCK_SIZE, "auto")
    lines = metrics.splitlines()
    assert kv_cache_facts("\n".join(s for s in lines if "cache_config_info" not in s)) is None
