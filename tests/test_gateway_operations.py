"""Operating the gateway: concurrency limit, client disconnects, graceful shutdown, request ids
in logs, the localizer stage and the preview endpoint."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from crop_localizer import LocalizationResult, RegionSource
from crop_vllm.layout import Region, snap_to_grid
from crop_vllm.testing.photos import picture
from server.config import Limits
from server.middleware import RequestIdFilter
from tests.gateway_fixtures import (
    API_KEY,
    AUTH,
    MODEL_NAME,
    QUARTER,
    chat_body,
    completed_in_vllm,
    data_url,
    image_message,
    scrape,
    wait_for,
)

pytestmark = pytest.mark.engine

#: A generation the tests stop long before it could end (ignore_eos: no early stop).
LONG = {"max_tokens": 1900, "ignore_eos": True}


def outstanding(gateway) -> int:
    return httpx.get(gateway.url + "/health").json()["engine"]["outstanding"]


def idle(gateway) -> None:
    """Wait until the shared engine runs nothing (earlier tests' requests are done)."""
    wait_for(lambda: outstanding(gateway) == 0, 120)


def test_requests_over_the_concurrency_limit_get_429_with_retry_after(start_gateway):
    limited = start_gateway(limits=Limits(max_concurrent_requests=1, max_tokens=2000))
    with (
        httpx.Client(base_url=limited.url, headers=AUTH, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(**LONG, stream=True)) as held,
    ):
        # Keep the iterator: dropping it would close the connection (and free the slot).
        lines = held.iter_lines()
        next(lines)  # the slot is taken while this stream runs
        refused = http.post("/v1/chat/completions", json=chat_body(max_tokens=1))
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
    with httpx.Client(base_url=limited.url, headers=AUTH, timeout=60) as http:
        wait_for(
            lambda: (
                http.post("/v1/chat/completions", json=chat_body(max_tokens=1)).status_code == 200
            ),
            60,
        )


def test_closing_a_stream_aborts_the_generation_in_the_engine(gateway):
    idle(gateway)
    before = completed_in_vllm(scrape(gateway))
    with (
        httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(**LONG, stream=True)) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        next(lines)
        wait_for(lambda: outstanding(gateway) == 1, 30)
    wait_for(lambda: outstanding(gateway) == 0, 120)
    # Gone from the engine without completing (neither stopped nor at its length): aborted.
    assert completed_in_vllm(scrape(gateway)) == before


def test_a_client_that_gives_up_on_a_plain_request_aborts_it(gateway):
    idle(gateway)
    before = completed_in_vllm(scrape(gateway))
    host, port = urlsplit(gateway.url).hostname, urlsplit(gateway.url).port
    body = json.dumps(chat_body(**LONG)).encode()
    with socket.create_connection((host, port)) as client:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(lambda: outstanding(gateway) == 1, 120)
    # The client hung up without an answer: the gateway must stop the generation.
    wait_for(lambda: outstanding(gateway) == 0, 120)
    assert completed_in_vllm(scrape(gateway)) == before


def test_a_client_disconnect_counts_as_499(gateway):
    def count() -> float:
        return scrape(gateway).get(
            ("crop_requests_total", (("endpoint", "chat"), ("mode", "auto"), ("status", "499"))),
            0.0,
        )

    before = count()
    with (
        httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(**LONG, stream=True)) as stream,
    ):
        next(stream.iter_lines())
    wait_for(lambda: count() == before + 1, 120)


def test_shutdown_lets_an_in_flight_stream_finish_and_refuses_new_connections(
    start_gateway, server_loop
):
    live = start_gateway()
    received: list[str] = []
    started = threading.Event()

    def consume() -> None:
        body = chat_body(
            max_tokens=120, ignore_eos=True, stream=True, stream_options={"include_usage": True}
        )
        with httpx.stream(
            "POST", live.url + "/v1/chat/completions", headers=AUTH, json=body, timeout=60
        ) as stream:
            for line in stream.iter_lines():
                received.append(line)
                started.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert started.wait(30)
    server_loop.stop(live)  # returns once uvicorn has drained and shut down
    reader.join(30)
    assert "data: [DONE]" in received
    assert any('"completion_tokens":120' in line for line in received)
    with pytest.raises(httpx.ConnectError):
        httpx.get(live.url + "/health")


def test_log_lines_carry_the_request_id(http, caplog):
    """The access line is written by the server's thread after the response has gone out, so
    the test waits for it rather than reading the records the moment the reply arrives."""
    caplog.handler.addFilter(RequestIdFilter())

    def logged() -> bool:
        return any(
            r.name == "server.access"
            and r.request_id == "log-7"
            and "/v1/chat/completions" in r.getMessage()
            for r in list(caplog.records)
        )

    with caplog.at_level(logging.INFO, logger="server.access"):
        http.post(
            "/v1/chat/completions", headers={"X-Request-Id": "log-7"}, json=chat_body(max_tokens=1)
        )
        wait_for(logged, 30)


class CornerLocalizer:
    """A localizer that always answers the bottom-right quarter, and records what it was asked."""

    REGION = Region(0.5, 0.5, 1.0, 1.0)

    def __init__(self) -> None:
        self.questions: list[str] = []

    async def localize(
        self, images: Sequence[Image.Image], questions: Sequence[str]
    ) -> list[LocalizationResult]:
        self.questions += questions
        cells = snap_to_grid(self.REGION, 8, 8)
        return [
            LocalizationResult(
                self.REGION, cells, ("car",), elapsed_s=0.01, source=RegionSource.LOCALIZER
            )
            for _ in images
        ]

    async def aclose(self) -> None:
        return None


def test_the_localizer_fills_in_regions_and_a_client_region_wins(start_gateway, tiny_tokens):
    localizer = CornerLocalizer()
    live = start_gateway(localizer=localizer)
    images = [data_url(picture(60)), data_url(picture(61))]
    message = image_message(images, "Where is the red car?")
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as http:
        off = http.post(
            "/v1/chat/completions", json=chat_body(message, max_tokens=1, crop={"mode": "off"})
        ).json()
        assert localizer.questions == []  # mode off never asks the localizer
        auto = http.post(
            "/v1/chat/completions",
            json=chat_body(message, max_tokens=1, crop={"regions": [QUARTER, None]}),
        ).json()
    first, second = auto["usage"]["crop"]["images"]
    assert (first["region_source"], first["region"]) == ("client", QUARTER)
    assert (second["region_source"], second["region"]) == ("localizer", [0.5, 0.5, 1.0, 1.0])
    assert second["localizer_seconds"] == 0.01
    assert localizer.questions == ["Where is the red car?"]  # only the image without a region
    saved = off["usage"]["prompt_tokens"] - auto["usage"]["prompt_tokens"]
    assert saved == 2 * (tiny_tokens.full - tiny_tokens.quarter_plc)


def preview(http, image_url: str, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "messages": [image_message([image_url])], **fields}
    return http.post("/v1/crop/preview", json=body)


def test_preview_draws_the_region_and_reports_the_kept_tokens(http, tiny_tokens):
    response = preview(http, data_url(picture(62)), crop={"regions": [QUARTER]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-crop-visual-tokens-full"] == str(tiny_tokens.full)
    assert response.headers["x-crop-visual-tokens-kept"] == str(tiny_tokens.quarter_plc)
    assert response.headers["x-crop-region-source"] == "client"
    drawn = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert drawn.size == (448, 320)  # 224x160 scaled up for visible outlines
    red, green, blue = drawn.getpixel((223, 100))  # the region's right edge
    assert red > 200 and green < 60 and blue < 60


def test_preview_without_pruning_keeps_every_token(http, tiny_tokens):
    response = preview(http, data_url(picture(63)), crop={"mode": "off"})
    assert response.headers["x-crop-visual-tokens-kept"] == str(tiny_tokens.full)
    assert response.headers["x-crop-region"] == "null"


def test_preview_of_a_missing_image_is_a_400(http):
    response = http.post("/v1/crop/preview?image=1", json=chat_body())
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"
