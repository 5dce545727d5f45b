"""The plugin on its own: `vllm serve` with CROP, driven over HTTP by the real openai client."""

from __future__ import annotations

import base64
import io

import openai
import pytest

from crop_vllm.testing.photos import picture

pytestmark = pytest.mark.engine

QUESTION = "What is in the top left corner?"


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(client, model: str, images, **extra_body):
    content = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    content.append({"type": "text", "text": QUESTION})
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=8,
        temperature=0,
        extra_body=extra_body or None,
    )


@pytest.fixture(scope="module")
def client(vllm_serve):
    return openai.OpenAI(base_url=vllm_serve.url + "/v1", api_key="unused", max_retries=0)


def test_region_shrinks_prompt_tokens_by_the_predicted_amount(client, vllm_serve):
    image = picture(3)
    base = chat(client, vllm_serve.model, [image])
    pruned = chat(
        client,
        vllm_serve.model,
        [image],
        mm_processor_kwargs={"crop_regions": [[0, 0, 0.5, 0.5]]},
    )
    # Tiny LLaVA: 8x8 grid; the quarter keeps 16 cells, the other 3 windows pool to 3 tokens.
    assert base.usage.prompt_tokens - pruned.usage.prompt_tokens == 64 - 19


def test_crop_off_gives_the_stock_answer(client, vllm_serve):
    image = picture(4)
    base = chat(client, vllm_serve.model, [image])
    off = chat(
        client,
        vllm_serve.model,
        [image],
        mm_processor_kwargs={"crop_mode": "off", "crop_regions": [[0, 0, 0.5, 0.5]]},
    )
    assert off.usage.prompt_tokens == base.usage.prompt_tokens
    assert off.choices[0].message.content == base.choices[0].message.content


def test_two_images_with_their_own_regions(client, vllm_serve):
    images = [picture(5), picture(6)]
    base = chat(client, vllm_serve.model, images)
    pruned = chat(
        client,
        vllm_serve.model,
        images,
        mm_processor_kwargs={"crop_regions": [[0, 0, 0.5, 0.5], None]},
    )
    assert base.usage.prompt_tokens - pruned.usage.prompt_tokens == 64 - 19


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_regions": [[0, 0, 1.5, 1]]},
        {"crop_regions": [[0, 0, 1, 1], [0, 0, 1, 1]]},
        {"crop_mode": "everything"},
    ],
)
def test_invalid_region_is_a_400_and_the_server_keeps_serving(client, vllm_serve, kwargs):
    with pytest.raises(openai.BadRequestError) as error:
        chat(client, vllm_serve.model, [picture(7)], mm_processor_kwargs=kwargs)
    assert "crop_" in str(error.value)
    assert chat(client, vllm_serve.model, [picture(7)]).usage.prompt_tokens > 64
