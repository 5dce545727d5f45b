"""The gateway with its embedded vLLM engine, driven by the official openai client over HTTP."""

from __future__ import annotations

import httpx
import pytest

from crop_vllm.testing.photos import picture
from tests.gateway_fixtures import MODEL_NAME, QUARTER, ask, data_url, image_message

pytestmark = pytest.mark.engine


def saved_by_plc(crop_usage: dict) -> int:
    return sum(i["visual_tokens_full"] - i["visual_tokens_after_plc"] for i in crop_usage["images"])


def test_chat_with_a_data_url_image_answers_with_usage(gateway, tiny_tokens):
    message = [image_message([data_url(picture(10))])]
    response = ask(gateway, message, max_tokens=6, extra_body={"ignore_eos": True})
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == ask(gateway, message, max_tokens=6).choices[0].message.content
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 6
    assert response.usage.total_tokens == response.usage.prompt_tokens + 6
    crop = response.usage.crop
    assert crop["visual_tokens_full"] == tiny_tokens.full
    assert crop["images"][0]["width"] == 224


def test_usage_crop_matches_the_engines_prompt_token_savings(gateway, tiny_tokens):
    message = [image_message([data_url(picture(11))])]
    off = ask(gateway, message, crop={"mode": "off"})
    pruned = ask(gateway, message, crop={"mode": "plc", "regions": [QUARTER]})
    crop = pruned.usage.crop
    assert (crop["visual_tokens_full"], crop["visual_tokens_after_plc"]) == (
        tiny_tokens.full,
        tiny_tokens.quarter_plc,
    )
    assert crop["visual_tokens_after_ilp"] == crop["visual_tokens_after_plc"]  # ILP not yet on
    assert crop["saved_fraction"] == pytest.approx(1 - tiny_tokens.quarter_plc / tiny_tokens.full)
    assert off.usage.prompt_tokens - pruned.usage.prompt_tokens == saved_by_plc(crop)
    assert off.usage.crop["visual_tokens_after_plc"] == tiny_tokens.full


def test_client_region_is_reported_with_its_paper_grid_cells(gateway):
    response = ask(gateway, [image_message([data_url(picture(12))])], crop={"regions": [QUARTER]})
    image = response.usage.crop["images"][0]
    assert image["region"] == QUARTER
    assert image["region_source"] == "client"
    assert image["cells"] == [0, 0, 3, 3]
    assert image["reason"] is None


def test_without_a_crop_field_auto_mode_prunes_nothing_when_the_localizer_is_none(gateway):
    response = ask(gateway, [image_message([data_url(picture(13))])])
    crop = response.usage.crop
    assert crop["mode"] == "plc"  # what `auto` applies
    assert crop["saved_fraction"] == 0
    assert crop["images"][0]["region"] is None
    assert "localizer is disabled" in crop["images"][0]["reason"]


def test_crop_off_skips_the_localizer_and_says_so(gateway):
    crop = ask(gateway, [image_message([data_url(picture(14))])], crop={"mode": "off"}).usage.crop
    assert crop["mode"] == "off"
    assert crop["images"][0]["reason"] == "crop mode is off for this request"
    assert crop["images"][0]["localizer_seconds"] == 0


def test_streaming_sends_the_same_text_and_usage_crop_in_the_usage_chunk(gateway, tiny_tokens):
    message = [image_message([data_url(picture(15))])]
    whole = ask(gateway, message, crop={"regions": [QUARTER]})
    stream = ask(
        gateway,
        message,
        crop={"regions": [QUARTER]},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
    assert not chunks[-1].choices
    assert usage_chunks[0].usage.prompt_tokens == whole.usage.prompt_tokens
    assert usage_chunks[0].usage.crop["visual_tokens_after_plc"] == tiny_tokens.quarter_plc


def test_streaming_without_include_usage_sends_no_usage(gateway):
    stream = ask(gateway, [image_message([data_url(picture(16))])], stream=True)
    assert all(chunk.usage is None for chunk in stream)


def test_image_by_http_url_from_the_allowed_local_server(gateway, image_server):
    by_url = ask(gateway, [image_message([image_server.url + "/small.png"])], crop={"mode": "off"})
    by_data = ask(
        gateway, [image_message([data_url(image_server.images["small"])])], crop={"mode": "off"}
    )
    assert by_url.usage.prompt_tokens == by_data.usage.prompt_tokens
    assert by_url.choices[0].message.content == by_data.choices[0].message.content


def test_text_only_request_has_no_visual_tokens(gateway):
    response = ask(gateway, [{"role": "user", "content": "Say something."}])
    crop = response.usage.crop
    assert crop["images"] == []
    assert crop["visual_tokens_full"] == 0 and crop["saved_fraction"] == 0
    assert response.usage.prompt_tokens > 0


def test_two_images_each_get_their_own_region(gateway, tiny_tokens):
    images = [data_url(picture(17)), data_url(picture(18, 196, 224))]
    off = ask(gateway, [image_message(images)], crop={"mode": "off"})
    pruned = ask(gateway, [image_message(images)], crop={"regions": [QUARTER, None]})
    first, second = pruned.usage.crop["images"]
    assert (first["visual_tokens_after_plc"], second["visual_tokens_after_plc"]) == (
        tiny_tokens.quarter_plc,
        tiny_tokens.full,
    )
    assert second["region"] is None and second["reason"]
    assert (
        off.usage.prompt_tokens - pruned.usage.prompt_tokens
        == tiny_tokens.full - tiny_tokens.quarter_plc
    )


def test_max_completion_tokens_bounds_the_answer(gateway):
    response = ask(gateway, [image_message([data_url(picture(19))])], max_completion_tokens=3)
    assert response.usage.completion_tokens == 3
    assert response.choices[0].finish_reason == "length"


def test_n_choices_with_a_seed_are_reproducible(gateway):
    message = [{"role": "user", "content": "Tell me a story."}]
    first = ask(gateway, message, n=2, temperature=1.0, seed=7, max_tokens=8)
    second = ask(gateway, message, n=2, temperature=1.0, seed=7, max_tokens=8)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert first.usage.completion_tokens == 16


def test_stop_string_ends_the_answer_before_it(gateway):
    message = [{"role": "user", "content": "What is shown?"}]
    free = ask(gateway, message, max_tokens=8).choices[0].message.content
    stop = free[len(free) // 2 :].strip()[:3]
    stopped = ask(gateway, message, max_tokens=8, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == free[: free.index(stop)]


def test_logprobs_come_with_the_requested_alternatives(gateway):
    response = ask(
        gateway, [{"role": "user", "content": "Hello"}], logprobs=True, top_logprobs=2, max_tokens=4
    )
    entries = response.choices[0].logprobs.content
    assert len(entries) == 4
    assert "".join(e.token for e in entries) == response.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob


def test_models_lists_the_served_model_with_the_engines_checkpoint_and_context(
    client, gateway_model
):
    (card,) = client.models.list().data
    assert card.id == MODEL_NAME
    assert (card.model_extra["root"], card.model_extra["max_model_len"]) == (gateway_model, 2048)


def test_version_names_the_gateway_and_the_vllm_serving(gateway):
    import vllm

    from server.version import CROP_SERVING_VERSION

    body = httpx.get(gateway.url + "/version").json()
    assert body == {"version": CROP_SERVING_VERSION, "vllm": [vllm.__version__]}


def test_health_reports_the_embedded_engine(gateway):
    response = httpx.get(gateway.url + "/health")
    assert response.status_code == 200
    assert response.json()["engine"]["kind"] == "embedded"


def test_request_id_is_echoed_and_names_the_completion(http):
    response = http.post(
        "/v1/chat/completions",
        headers={"X-Request-Id": "trace-42"},
        json={
            "model": MODEL_NAME,
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 1,
        },
    )
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["id"] == "chatcmpl-trace-42"


def test_each_request_gets_a_fresh_id_when_none_is_given(http):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    ids = {http.post("/v1/chat/completions", json=body).headers["x-request-id"] for _ in range(2)}
    assert len(ids) == 2
