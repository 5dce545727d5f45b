"""The remote engine: the gateway in front of a real `vllm serve` running the CROP plugin."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from urllib.parse import urlsplit

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from server.decoding import load_image
from server.engines.remote import Backend, RemoteEngine, _data_url
from tests.engine_support import test_image
from tests.gateway_fixtures import (
    API_KEY,
    MODEL_NAME,
    QUARTER,
    TcpForwarder,
    data_url,
    free_port,
    gateway_config,
    image_message,
)

pytestmark = pytest.mark.engine

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def remote_gateways(server_loop, vllm_serve):
    """`start(backend_urls) -> LiveGateway` with the remote engine, stopped after the module."""
    started = []

    def start(urls: list[str]):
        config = gateway_config(
            vllm_serve.model,
            engine="remote",
            remote_urls=tuple(urls),
            remote_retry_interval_s=0.3,
        )
        started.append(server_loop.serve(create_app(config)))
        return started[-1]

    yield start
    for live in started:
        server_loop.stop(live)


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
def remote(remote_gateways, vllm_serve):
    """A gateway whose first backend is dead and whose second is the real `vllm serve`."""
    dead = f"http://127.0.0.1:{free_port()}"
    return remote_gateways([dead, vllm_serve.url])


def ask(live, messages, **kwargs):
    client = openai.OpenAI(base_url=live.api, api_key=API_KEY, max_retries=0, timeout=120)
    crop = kwargs.pop("crop", None)
    return client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=kwargs.pop("max_tokens", 4),
        temperature=0,
        extra_body={"crop": crop} if crop is not None else None,
        **kwargs,
    )


def health(live) -> dict:
    return httpx.get(live.url + "/health").json()


def test_usage_crop_matches_vllm_serves_prompt_token_savings(remote):
    message = [image_message([data_url(test_image(70))])]
    off = ask(remote, message, crop={"mode": "off"})
    pruned = ask(remote, message, crop={"regions": [QUARTER]})
    crop = pruned.usage.crop
    assert (crop["visual_tokens_full"], crop["visual_tokens_after_plc"]) == (64, 19)
    assert off.usage.prompt_tokens - pruned.usage.prompt_tokens == 64 - 19


def test_streaming_through_vllm_serve_ends_with_the_usage_chunk(remote):
    message = [image_message([data_url(test_image(71)), data_url(test_image(72))])]
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
    assert chunks[-1].usage.crop["visual_tokens_after_plc"] == 19 + 64


def test_a_dead_backend_is_taken_out_and_the_live_one_serves(remote, vllm_serve):
    for seed in range(3):
        assert ask(remote, [{"role": "user", "content": f"Hello {seed}"}]).choices[0].message
    backends = {b["url"]: b for b in health(remote)["engine"]["backends"]}
    live = backends.pop(vllm_serve.url)
    (dead,) = backends.values()
    assert live["healthy"] and live["model"] == vllm_serve.model
    assert not dead["healthy"] and dead["last_error"]


def test_a_backend_that_comes_back_is_used_again(remote_gateways, forwarders):
    backend = forwarders()
    live = remote_gateways([backend.url])
    with pytest.raises(openai.InternalServerError) as caught:
        ask(live, [{"role": "user", "content": "Hello"}])
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "engine_unavailable"
    assert httpx.get(live.url + "/health").status_code == 503
    backend.open()
    deadline = time.monotonic() + 10
    while health(live)["status"] != "ok":
        assert time.monotonic() < deadline, "the backend was not retried"
        time.sleep(0.1)
    assert ask(live, [{"role": "user", "content": "Hello again"}]).usage.completion_tokens == 4
    assert any(line.startswith("POST /v1/chat/completions") for line in backend.requests)


def test_a_request_whose_connection_the_backend_closes_is_sent_again(remote_gateways, forwarders):
    backend = forwarders()
    backend.open()
    live = remote_gateways([backend.url])
    backend.drop_next = b"POST /v1/chat/completions"
    assert ask(live, [{"role": "user", "content": "Hello"}], max_tokens=1).choices[0].message
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


def test_requests_spread_over_equally_idle_backends(remote_gateways, forwarders):
    first, second = forwarders(), forwarders()
    first.open()
    second.open()
    live = remote_gateways([first.url, second.url])
    for seed in range(4):
        ask(live, [{"role": "user", "content": f"Hi {seed}"}], max_tokens=1)
    chats = [
        sum(line.startswith("POST /v1/chat/completions") for line in f.requests)
        for f in (first, second)
    ]
    assert chats == [2, 2]


def test_an_upright_jpeg_goes_to_vllm_as_the_clients_bytes():
    buffer = io.BytesIO()
    test_image(0).save(buffer, format="JPEG")
    image = load_image(buffer.getvalue(), max_pixels=10**7)
    expected = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert _data_url(image) == expected


def test_a_converted_image_goes_to_vllm_as_a_lossless_png():
    buffer = io.BytesIO()
    test_image(0).convert("L").save(buffer, format="PNG")
    image = load_image(buffer.getvalue(), max_pixels=10**7)
    url = _data_url(image)
    assert url.startswith("data:image/png;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.mode == "RGB" and np.array_equal(np.asarray(sent), np.asarray(image.pixels()))


def test_the_least_busy_healthy_backend_is_picked():
    engine = RemoteEngine(["http://a", "http://b", "http://c"])
    engine.backends = [
        Backend("http://a", healthy=True, outstanding=2),
        Backend("http://b", healthy=True, outstanding=1),
        Backend("http://c", healthy=False, outstanding=0),
    ]
    assert engine._pick(set()).url == "http://b"
    assert engine._pick({"http://b"}).url == "http://a"
    assert engine._pick({"http://a", "http://b"}) is None


def test_a_request_vllm_refuses_is_a_400_from_the_gateway(remote):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(remote, [{"role": "user", "content": "Hi"}], n=2)  # greedy with n=2
    assert caught.value.body["code"] == "invalid_request"
    assert health(remote)["status"] == "ok"  # a refusal does not take the backend out


def running_in_vllm(vllm_serve) -> float:
    text = httpx.get(vllm_serve.url + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "vllm:num_requests_running"
    )


def test_closing_the_stream_aborts_the_request_in_vllm_serve(remote, vllm_serve):
    assert running_in_vllm(vllm_serve) == 0
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 1900,
        "stream": True,
    }
    with (
        httpx.Client(base_url=remote.url, headers=AUTH, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        next(lines)
        assert running_in_vllm(vllm_serve) == 1
    closed = time.monotonic()
    while running_in_vllm(vllm_serve) != 0:
        assert time.monotonic() - closed < 3, "vllm serve still generates for a gone client"
        time.sleep(0.05)
