"""`/metrics`, read with prometheus_client's own parser: each counter moves by what was served."""

from __future__ import annotations

import openai
import pytest

from crop_vllm.options import CropSettings
from crop_vllm.testing.photos import picture
from server.config import CropDefaults
from tests.gateway_fixtures import (
    API_KEY,
    MODEL_NAME,
    QUARTER,
    Delta,
    data_url,
    image_message,
    scrape,
)

pytestmark = pytest.mark.engine


def test_every_metric_is_the_gateways_crop_or_the_embedded_vllms_own(gateway):
    names = {name for name, _ in scrape(gateway)}
    assert any(name.startswith("crop_") for name in names)
    assert any(name.startswith("vllm:") for name in names)
    assert all(name.startswith(("crop_", "vllm:")) for name in names)


def test_a_pruned_request_and_a_refused_one_move_the_counters_exactly(gateway, client, tiny_tokens):
    before = scrape(gateway)
    response = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[image_message([data_url(picture(50))])],
        max_tokens=4,
        temperature=0,
        extra_body={"crop": {"regions": [QUARTER]}},
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    delta = Delta(before, scrape(gateway))

    assert delta("crop_requests_total", endpoint="chat", mode="auto", status="200") == 1
    assert delta("crop_requests_total", endpoint="chat", mode="auto", status="404") == 1
    full, kept = tiny_tokens.full, tiny_tokens.quarter_plc
    assert delta("crop_visual_tokens_total", stage="full") == full
    assert delta("crop_visual_tokens_total", stage="after_plc") == kept
    assert delta("crop_visual_tokens_total", stage="after_ilp") == kept
    assert delta("crop_visual_tokens_saved_total") == full - kept
    assert delta("crop_prompt_tokens_total") == response.usage.prompt_tokens
    assert delta("crop_completion_tokens_total") == 4
    assert delta("crop_images_total", source="client") == 1
    assert delta("crop_localization_seconds_count") == 1
    assert delta("crop_localization_batch_size_sum") == 0  # the client's region: nothing to find
    assert delta("crop_time_to_first_token_seconds_count") == 0  # only streams are timed
    assert delta("crop_prompt_token_checks_total", result="match") == 1
    assert delta("crop_gateway_overhead_seconds_count") == 1  # the refused one met no engine
    assert delta("crop_request_duration_seconds_count", endpoint="chat") == 2
    assert scrape(gateway)[("crop_requests_in_flight", (("endpoint", "chat"),))] == 0


def test_a_streamed_request_without_crop_counts_its_full_visual_tokens(
    gateway, client, tiny_tokens
):
    before = scrape(gateway)
    stream = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[image_message([data_url(picture(51))])],
        max_tokens=3,
        stream=True,
        extra_body={"crop": {"mode": "off"}},
    )
    # vLLM merges a request's streamed deltas while its reader lags: up to one chunk per token.
    assert 1 <= len([c for c in stream if c.choices and c.choices[0].delta.content]) <= 3
    delta = Delta(before, scrape(gateway))
    assert delta("crop_requests_total", endpoint="chat", mode="off", status="200") == 1
    assert delta("crop_visual_tokens_total", stage="full") == tiny_tokens.full
    assert delta("crop_visual_tokens_total", stage="after_plc") == tiny_tokens.full
    assert delta("crop_visual_tokens_saved_total") == 0
    assert delta("crop_localization_seconds_count") == 0  # mode off: no localization stage
    assert delta("crop_completion_tokens_total") == 3
    assert delta("crop_time_to_first_token_seconds_count") == 1


def test_an_unreadable_body_counts_with_mode_unknown(gateway, http):
    before = scrape(gateway)
    assert http.post("/v1/chat/completions", content=b"{").status_code == 400
    delta = Delta(before, scrape(gateway))
    assert delta("crop_requests_total", endpoint="chat", mode="unknown", status="400") == 1


def test_an_engine_whose_image_tokens_differ_from_the_gateways_count_is_counted(start_gateway):
    """A gateway configured with another outside stride than the shared engine's (as a remote
    backend that slipped through would be) counts the disagreement on every pruned response."""
    live = start_gateway(crop=CropDefaults(CropSettings(outside_stride=2)))
    before = scrape(live)
    client = openai.OpenAI(base_url=live.api, api_key=API_KEY, max_retries=0, timeout=120)
    client.chat.completions.create(
        model=MODEL_NAME,
        messages=[image_message([data_url(picture(52))])],
        max_tokens=1,
        extra_body={"crop": {"regions": [QUARTER]}},
    )
    delta = Delta(before, scrape(live))
    assert delta("crop_prompt_token_checks_total", result="mismatch") == 1
    assert delta("crop_prompt_token_checks_total", result="match") == 0
