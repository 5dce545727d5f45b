"""Operating the gateway: concurrency limit, client disconnects, graceful shutdown, request ids
in logs, the localizer stage and the preview endpoint."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Sequence

import httpx
import pytest
from PIL import Image

from crop_localizer import LocalizationResult, RegionSource
from crop_vllm.layout import Region, snap_to_grid
from server.config import Limits
from server.middleware import RequestIdFilter
from tests.engine_support import test_image
from tests.gateway_fixtures import API_KEY, MODEL_NAME, QUARTER, data_url, image_message

pytestmark = pytest.mark.engine

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Longer than the tests ever wait: at hundreds of tokens a second this takes many seconds.
LONG = 1900


def chat_body(max_tokens: int, stream: bool = False, **fields) -> dict:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": max_tokens,
        "stream": stream,
        **fields,
    }


def outstanding(gateway) -> int:
    return httpx.get(gateway.url + "/health").json()["engine"]["outstanding"]


def wait_for(condition, timeout: float) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_requests_over_the_concurrency_limit_get_429_with_retry_after(start_gateway):
    limited = start_gateway(limits=Limits(max_concurrent_requests=1, max_tokens=2000))
    with (
        httpx.Client(base_url=limited.url, headers=AUTH, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(LONG, stream=True)) as held,
    ):
        # Keep the iterator: dropping it would close the connection (and free the slot).
        lines = held.iter_lines()
        next(lines)  # the slot is taken while this stream runs
        refused = http.post("/v1/chat/completions", json=chat_body(1))
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "too_many_concurrent_requests"
    with httpx.Client(base_url=limited.url, headers=AUTH, timeout=60) as http:
        wait_for(
            lambda: http.post("/v1/chat/completions", json=chat_body(1)).status_code == 200, 10
        )


def test_closing_a_stream_aborts_the_generation_in_the_engine(gateway):
    assert outstanding(gateway) == 0
    with (
        httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(LONG, stream=True)) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        next(lines)
        assert outstanding(gateway) == 1
    assert wait_for(lambda: outstanding(gateway) == 0, 10) < 3


def test_a_client_that_gives_up_on_a_plain_request_aborts_it(gateway):
    assert outstanding(gateway) == 0
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gateway.url + "/v1/chat/completions", headers=AUTH, json=chat_body(LONG), timeout=1.5
        )
    assert wait_for(lambda: outstanding(gateway) == 0, 10) < 3


def test_a_client_disconnect_counts_as_499(gateway):
    def count() -> float:
        text = httpx.get(gateway.url + "/metrics").text
        prefix = 'crop_requests_total{endpoint="chat",mode="auto",status="499"} '
        return sum(
            float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)
        )

    before = count()
    with (
        httpx.Client(base_url=gateway.url, headers=AUTH, timeout=60) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(LONG, stream=True)) as stream,
    ):
        next(stream.iter_lines())
    wait_for(lambda: count() == before + 1, 10)


def test_shutdown_lets_an_in_flight_stream_finish_and_refuses_new_connections(
    start_gateway, server_loop
):
    live = start_gateway()
    received: list[str] = []
    started = threading.Event()

    def consume() -> None:
        body = chat_body(120, stream=True, stream_options={"include_usage": True})
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
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="server.access"):
        http.post("/v1/chat/completions", headers={"X-Request-Id": "log-7"}, json=chat_body(1))
    access = [r for r in caplog.records if r.name == "server.access"]
    assert any(r.request_id == "log-7" and "/v1/chat/completions" in r.getMessage() for r in access)


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


def test_the_localizer_fills_in_regions_and_a_client_region_wins(start_gateway):
    localizer = CornerLocalizer()
    live = start_gateway(localizer=localizer)
    images = [data_url(test_image(60)), data_url(test_image(61))]
    message = image_message(images, "Where is the red car?")
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=60) as http:
        off = http.post(
            "/v1/chat/completions", json=chat_body(1, messages=[message], crop={"mode": "off"})
        ).json()
        assert localizer.questions == []  # mode off never asks the localizer
        auto = http.post(
            "/v1/chat/completions",
            json=chat_body(1, messages=[message], crop={"regions": [QUARTER, None]}),
        ).json()
    first, second = auto["usage"]["crop"]["images"]
    assert (first["region_source"], first["region"]) == ("client", QUARTER)
    assert (second["region_source"], second["region"]) == ("localizer", [0.5, 0.5, 1.0, 1.0])
    assert second["localizer_seconds"] == 0.01
    assert localizer.questions == ["Where is the red car?"]  # only the image without a region
    saved = off["usage"]["prompt_tokens"] - auto["usage"]["prompt_tokens"]
    assert saved == 2 * (64 - 19)


def preview(http, image_url: str, **fields) -> httpx.Response:
    body = {"model": MODEL_NAME, "messages": [image_message([image_url])], **fields}
    return http.post("/v1/crop/preview", json=body)


def test_preview_draws_the_region_and_reports_the_kept_tokens(http):
    response = preview(http, data_url(test_image(62)), crop={"regions": [QUARTER]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-crop-visual-tokens-full"] == "64"
    assert response.headers["x-crop-visual-tokens-kept"] == "19"
    assert response.headers["x-crop-region-source"] == "client"
    picture = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert picture.size == (448, 320)  # 224x160 scaled up for visible outlines
    red, green, blue = picture.getpixel((223, 100))  # the region's right edge
    assert red > 200 and green < 60 and blue < 60


def test_preview_without_pruning_keeps_every_token(http):
    response = preview(http, data_url(test_image(63)), crop={"mode": "off"})
    assert response.headers["x-crop-visual-tokens-kept"] == "64"
    assert response.headers["x-crop-region"] == "null"


def test_preview_of_a_missing_image_is_a_400(http):
    response = http.post("/v1/crop/preview?image=1", json=chat_body(1) | {"max_tokens": None})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image"
