"""Every kind of bad input gets its documented status and OpenAI-shaped error, and the gateway
keeps serving afterwards."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from crop_vllm.testing.photos import noise, picture
from tests.gateway_fixtures import (
    API_KEY,
    MODEL_NAME,
    QUARTER,
    data_url,
    image_message,
)

pytestmark = pytest.mark.engine

SMALL = data_url(picture(30))
FIRST_IMAGE = "messages.0.content.0.image_url.url"


def chat(*messages: dict, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL_NAME, "messages": list(messages), "max_tokens": 2, **fields}


def with_image(url: str, **fields: Any) -> dict[str, Any]:
    return {"json": chat(image_message([url]), **fields)}


@dataclass(frozen=True)
class Case:
    """A request (httpx keyword arguments, built with the image server's URL) and its error."""

    request: Callable[[str], dict[str, Any]]
    status: int
    code: str
    param: str | None = None


CASES = {
    "malformed JSON": Case(
        lambda _: {"content": b'{"model": "x", ', "headers": {"Content-Type": "application/json"}},
        400,
        "invalid_json",
    ),
    "messages of the wrong type": Case(
        lambda _: {"json": {"model": MODEL_NAME, "messages": "hello"}},
        400,
        "invalid_value",
        "messages",
    ),
    "temperature of the wrong type": Case(
        lambda _: {"json": chat({"role": "user", "content": "hi"}, temperature="hot")},
        400,
        "invalid_value",
        "temperature",
    ),
    "unknown field": Case(
        lambda _: {"json": chat({"role": "user", "content": "hi"}, frobnicate=1)},
        400,
        "invalid_value",
        "frobnicate",
    ),
    "image in a system message": Case(
        lambda _: {"json": chat({**image_message([SMALL]), "role": "system"})},
        400,
        "invalid_value",
    ),
    "unknown model": Case(
        lambda _: {"json": {**chat({"role": "user", "content": "hi"}), "model": "gpt-9"}},
        404,
        "model_not_found",
        "model",
    ),
    "corrupt image": Case(
        lambda _: with_image("data:image/png;base64," + base64.b64encode(b"not a png").decode()),
        400,
        "invalid_image",
        FIRST_IMAGE,
    ),
    "invalid base64": Case(
        lambda _: with_image("data:image/png;base64,@@@@"), 400, "invalid_image_url", FIRST_IMAGE
    ),
    "oversized image bytes": Case(
        lambda _: with_image(data_url(noise(0, 300, 300))), 400, "image_too_large", FIRST_IMAGE
    ),
    "oversized image pixels": Case(
        lambda url: with_image(url + "/huge.png"), 400, "image_too_large", FIRST_IMAGE
    ),
    "oversized download without a length": Case(
        lambda url: with_image(url + "/unsized"), 400, "image_too_large", FIRST_IMAGE
    ),
    "corrupt image by URL": Case(
        lambda url: with_image(url + "/corrupt"), 400, "invalid_image", FIRST_IMAGE
    ),
    "web page instead of an image": Case(
        lambda url: with_image(url + "/page"), 400, "unsupported_image_type", FIRST_IMAGE
    ),
    "image URL answering 404": Case(
        lambda url: with_image(url + "/missing"), 400, "image_fetch_failed", FIRST_IMAGE
    ),
    "image URL too slow": Case(
        lambda url: with_image(url + "/slow"), 400, "image_fetch_timeout", FIRST_IMAGE
    ),
    "blocked loopback address": Case(
        lambda url: with_image(url.replace("127.0.0.1", "127.0.0.2") + "/small.png"),
        400,
        "image_url_blocked",
        FIRST_IMAGE,
    ),
    "redirect to a blocked address": Case(
        lambda url: with_image(f"{url}/redirect?to=http://127.0.0.2:9/small.png"),
        400,
        "image_url_blocked",
        FIRST_IMAGE,
    ),
    "file URL": Case(
        lambda _: with_image("file:///etc/passwd"), 400, "unsupported_image_url", FIRST_IMAGE
    ),
    "too many images": Case(
        lambda _: {"json": chat(image_message([SMALL] * 3))}, 400, "too_many_images", "messages"
    ),
    "region outside the image": Case(
        lambda _: with_image(SMALL, crop={"regions": [[0, 0, 1.5, 1]]}),
        400,
        "invalid_value",
        "crop.regions",
    ),
    "inverted region": Case(
        lambda _: with_image(SMALL, crop={"regions": [[0.6, 0, 0.4, 1]]}),
        400,
        "invalid_value",
        "crop.regions",
    ),
    "one region too many": Case(
        lambda _: with_image(SMALL, crop={"regions": [QUARTER, QUARTER]}),
        400,
        "invalid_crop",
        "crop",
    ),
    "unknown crop mode": Case(
        lambda _: with_image(SMALL, crop={"mode": "zoom"}), 400, "invalid_value", "crop.mode"
    ),
    "ILP before it is supported": Case(
        lambda _: with_image(SMALL, crop={"mode": "ilp"}), 400, "invalid_crop", "crop"
    ),
    "max_tokens above the server's limit": Case(
        lambda _: {"json": chat({"role": "user", "content": "hi"}, max_tokens=5000)},
        400,
        "invalid_value",
        "max_tokens",
    ),
    "n above the server's limit": Case(
        lambda _: {"json": chat({"role": "user", "content": "hi"}, n=9, temperature=1)},
        400,
        "invalid_value",
        "n",
    ),
    "top_logprobs without logprobs": Case(
        lambda _: {"json": chat({"role": "user", "content": "hi"}, top_logprobs=2)},
        400,
        "invalid_value",
        "top_logprobs",
    ),
    "several greedy choices (the engine refuses)": Case(
        lambda _: {"json": chat({"role": "user", "content": "hi"}, n=2, temperature=0)},
        400,
        "invalid_request",
    ),
    "prompt longer than the context (the engine refuses)": Case(
        lambda _: {"json": chat({"role": "user", "content": "red car " * 1500})},
        400,
        "invalid_request",
    ),
    "body too large": Case(
        lambda _: {"json": chat({"role": "user", "content": "x" * 2_100_000})},
        413,
        "request_too_large",
    ),
    "missing API key": Case(
        lambda _: {
            "json": chat({"role": "user", "content": "hi"}),
            "headers": {"Authorization": ""},
        },
        401,
        "invalid_api_key",
    ),
    "wrong API key": Case(
        lambda _: {
            "json": chat({"role": "user", "content": "hi"}),
            "headers": {"Authorization": "Bearer nope"},
        },
        401,
        "invalid_api_key",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gets_its_error_and_the_gateway_stays_healthy(name, http, image_server):
    case = CASES[name]
    response = http.post("/v1/chat/completions", **case.request(image_server.url))
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == case.code
    assert error["message"]
    if case.param is not None:
        assert error["param"] is not None and error["param"].startswith(case.param)
    assert http.get("/health").status_code == 200


def test_unknown_route_answers_404_in_the_error_shape(http):
    response = http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_missing_api_key_asks_for_bearer_authentication(gateway):
    response = httpx.get(gateway.url + "/v1/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_health_and_metrics_need_no_api_key(gateway):
    assert httpx.get(gateway.url + "/health").status_code == 200
    assert httpx.get(gateway.url + "/metrics").status_code == 200


def test_the_gateway_still_answers_after_bad_requests(http):
    for body in ({"model": MODEL_NAME}, {"messages": []}):
        assert http.post("/v1/chat/completions", json=body).status_code == 400
    response = http.post("/v1/chat/completions", json=with_image(SMALL)["json"])
    assert response.status_code == 200
    assert response.json()["usage"]["crop"]["visual_tokens_full"] == 64


def test_openai_client_raises_its_typed_errors(gateway):
    import openai

    client = openai.OpenAI(base_url=gateway.api, api_key=API_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[image_message([SMALL])],
            extra_body={"crop": {"regions": [[0, 0, 2, 2]]}},
        )
    assert caught.value.body["param"].startswith("crop.regions")
    unauthorized = openai.OpenAI(base_url=gateway.api, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unauthorized.models.list()
