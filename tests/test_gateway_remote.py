"""The remote engine: the gateway in front of a real `vllm serve` running the CROP plugin."""

from __future__ import annotations

import asyncio
import base64
import io
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from crop_vllm.options import CropSettings
from crop_vllm.testing.photos import picture
from server.config import CropDefaults
from server.decoding import load_image
from server.engines.remote import Backend, RemoteEngine, image_data_url
from tests.gateway_fixtures import (
    AUTH,
    QUARTER,
    TcpForwarder,
    ask,
    chat_body,
    completed_in_vllm,
    data_url,
    free_port,
    image_message,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def vllm_port(vllm_serve) -> int:
    return urlsplit(vllm_serve.url).port


@pytest.fixture(scope="module")
def forwarders(vllm_port):
    made: list[TcpForwarder] = []

    def make() -> TcpForwarder:
        made.append(TcpForwarder(vllm_port))
        return made[-1]

    yield make
    for forwarder in made:
        forwarder.close()


@pytest.fixture(scope="module")
def remote(start_remote_gateway, vllm_serve):
    """A gateway whose first backend is dead and whose second is the real `vllm serve`."""
    dead = f"http://127.0.0.1:{free_port()}"
    return start_remote_gateway([dead, vllm_serve.url])


def health(live) -> dict:
    return httpx.get(live.url + "/health").json()


def metric(live, name: str, **labels: str) -> float | None:
    text = httpx.get(live.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def completed(vllm_serve) -> float:
    return completed_in_vllm(scrape(vllm_serve))


def running_in_vllm(vllm_serve) -> float:
    text = httpx.get(vllm_serve.url + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vllm:num_requests_running"
    )


def test_usage_crop_matches_vllm_serves_prompt_token_savings(remote, tiny_tokens):
    message = [image_message([data_url(picture(70))])]
    off = ask(remote, message, crop={"mode": "off"})
    pruned = ask(remote, message, crop={"regions": [QUARTER]})
    crop = pruned.usage.crop
    assert crop["visual_tokens_full"] == tiny_tokens.full
    assert crop["visual_tokens_after_plc"] == tiny_tokens.quarter_plc
    assert off.usage.prompt_tokens - pruned.usage.prompt_tokens == (
        tiny_tokens.full - tiny_tokens.quarter_plc
    )


def test_streaming_through_vllm_serve_ends_with_the_usage_chunk(remote, tiny_tokens):
    message = [image_message([data_url(picture(71)), data_url(picture(72))])]
    whole = ask(remote, message, crop={"regions": [QUARTER, None]})
    chunks = list(
        ask(
            remote,
            message,
            crop={"regions": [QUARTER, None]},
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.crop["visual_tokens_after_plc"] == (
        tiny_tokens.quarter_plc + tiny_tokens.full
    )


def test_a_dead_backend_is_taken_out_and_the_live_one_serves(remote, vllm_serve):
    for seed in range(3):
        response = ask(remote, [{"role": "user", "content": f"Hello {seed}"}])
        assert response.usage.completion_tokens == 4
    backends = {b["url"]: b for b in health(remote)["engine"]["backends"]}
    live = backends.pop(vllm_serve.url)
    (dead,) = backends.values()
    assert live["healthy"] and live["model"] == vllm_serve.model
    assert live["crop_settings_match"] is True
    assert not dead["healthy"] and dead["last_error"]


def test_models_and_version_describe_what_the_backends_serve(remote_gateway, vllm_serve):
    import vllm

    with httpx.Client(base_url=remote_gateway.url, headers=AUTH) as http:
        (card,) = http.get("/v1/models").json()["data"]
        version = http.get("/version").json()
    assert (card["root"], card["max_model_len"]) == (vllm_serve.model, 2048)
    assert version["vllm"] == [vllm.__version__]


@pytest.mark.parametrize(
    "settings",
    [
        CropSettings(outside_stride=2),
        CropSettings(drop_outside=True),
        CropSettings(enable_ilp=False),
    ],
    ids=["outside stride", "drop outside", "ILP disabled"],
)
def test_a_backend_with_other_crop_settings_is_taken_out_of_rotation(
    start_remote_gateway, vllm_serve, settings
):
    live = start_remote_gateway([vllm_serve.url], crop=CropDefaults(settings))
    (backend,) = health(live)["engine"]["backends"]
    assert not backend["healthy"] and backend["crop_settings_match"] is False
    assert backend["last_error"].startswith("CROP settings differ")
    assert metric(live, "crop_backend_settings_mismatch", backend=vllm_serve.url) == 1
    assert metric(live, "crop_backend_up", backend=vllm_serve.url) == 0
    with pytest.raises(openai.InternalServerError) as caught:
        ask(live, [{"role": "user", "content": "Hello"}])
    assert caught.value.status_code == 503


def test_a_backend_that_comes_back_is_used_again(start_remote_gateway, forwarders):
    backend = forwarders()
    live = start_remote_gateway([backend.url])
    with pytest.raises(openai.InternalServerError) as caught:
        ask(live, [{"role": "user", "content": "Hello"}])
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "engine_unavailable"
    assert httpx.get(live.url + "/health").status_code == 503
    backend.open()
    wait_for(lambda: health(live)["status"] == "ok", 60)
    assert ask(live, [{"role": "user", "content": "Hello again"}]).usage.completion_tokens == 4
    assert any(line.startswith("POST /v1/chat/completions") for line in backend.requests)


def test_a_request_whose_connection_the_backend_closes_is_sent_again(
    start_remote_gateway, forwarders
):
    backend = forwarders()
    backend.open()
    live = start_remote_gateway([backend.url])
    backend.drop_next = b"POST /v1/chat/completions"
    assert ask(live, [{"role": "user", "content": "Hello"}], max_tokens=1).usage.total_tokens > 0
    assert backend.drop_next is None
    assert sum(line.startswith("POST /v1/chat") for line in backend.requests) == 2
    assert health(live)["status"] == "ok"


def test_a_probe_whose_connection_the_backend_closes_keeps_the_backend_in(forwarders):
    backend = forwarders()
    backend.open()

    async def probe_with_one_drop() -> Backend:
        engine = RemoteEngine([backend.url], retry_interval_s=3600)
        await engine.start()
        try:
            backend.drop_next = b"GET /v1/models"
            await engine.probe()
            return engine.backends[0]
        finally:
            await engine.aclose()

    probed = asyncio.run(probe_with_one_drop())
    assert backend.drop_next is None
    assert probed.healthy and probed.last_error is None


def test_requests_spread_over_equally_idle_backends(start_remote_gateway, forwarders):
    first, second = forwarders(), forwarders()
    first.open()
    second.open()
    live = start_remote_gateway([first.url, second.url])
    for seed in range(4):
        ask(live, [{"role": "user", "content": f"Hi {seed}"}], max_tokens=1)
    chats = [
        sum(line.startswith("POST /v1/chat/completions") for line in f.requests)
        for f in (first, second)
    ]
    assert chats == [2, 2]


def test_a_request_goes_to_the_backend_with_fewer_outstanding_requests(
    start_remote_gateway, forwarders
):
    busy, idle = forwarders(), forwarders()
    busy.open()
    idle.open()
    live = start_remote_gateway([busy.url, idle.url])
    with (
        httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as http,
        http.stream(
            "POST", "/v1/chat/completions", json=chat_body(max_tokens=1900, stream=True)
        ) as held,
    ):
        next(held.iter_lines())
        holder = busy if any(r.startswith("POST /v1/chat") for r in busy.requests) else idle
        other = idle if holder is busy else busy
        before = len(other.requests)
        ask(live, [{"role": "user", "content": "Hi"}], max_tokens=1)
        chats = [r for r in other.requests[before:] if r.startswith("POST /v1/chat")]
        assert chats == ["POST /v1/chat/completions HTTP/1.1"]  # (probes go to both)


def test_an_upright_jpeg_goes_to_vllm_as_the_clients_bytes():
    buffer = io.BytesIO()
    picture(0).save(buffer, format="JPEG")
    image = load_image(buffer.getvalue(), max_pixels=10**7)
    expected = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert image_data_url(image) == expected


def test_a_converted_image_goes_to_vllm_as_a_lossless_png():
    buffer = io.BytesIO()
    picture(0).convert("L").save(buffer, format="PNG")
    image = load_image(buffer.getvalue(), max_pixels=10**7)
    url = image_data_url(image)
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.mode == "RGB" and np.array_equal(np.asarray(sent), np.asarray(image.pixels()))


def test_a_request_vllm_refuses_is_a_400_from_the_gateway(remote):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(remote, [{"role": "user", "content": "Hi"}], n=2)  # greedy with n=2
    assert caught.value.body["code"] == "invalid_request"
    assert health(remote)["status"] == "ok"  # a refusal does not take the backend out


def test_closing_the_stream_aborts_the_request_in_vllm_serve(remote, vllm_serve):
    wait_for(lambda: running_in_vllm(vllm_serve) == 0, 120)  # earlier tests' requests are done
    before = completed(vllm_serve)
    with (
        httpx.Client(base_url=remote.url, headers=AUTH, timeout=60) as http,
        http.stream(
            "POST", "/v1/chat/completions", json=chat_body(max_tokens=1900, stream=True)
        ) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        next(lines)
        wait_for(lambda: running_in_vllm(vllm_serve) == 1, 30)
    wait_for(lambda: running_in_vllm(vllm_serve) == 0, 120)
    # Gone from the engine without completing (neither stopped nor at its length): aborted.
    assert completed(vllm_serve) == before
