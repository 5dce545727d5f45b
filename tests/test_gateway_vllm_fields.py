"""vLLM's own request fields through the gateway: each reaches the engine and takes effect, with
the embedded engine and with `vllm serve` behind the remote engine alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from crop_vllm.testing.photos import picture
from tests.gateway_fixtures import LiveGateway, ask, data_url, image_message

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "Describe the weather in three words."}]


@dataclass(frozen=True)
class Tokens:
    """The tiny tokenizer's ids the cases need."""

    eos: int
    eos_text: str


@pytest.fixture(scope="module")
def tokens(gateway_model) -> Tokens:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gateway_model)
    return Tokens(eos=tokenizer.eos_token_id, eos_text=tokenizer.eos_token)


@pytest.fixture(scope="module", params=["embedded", "remote"])
def live(request, gateway, remote_gateway) -> LiveGateway:
    """Each case runs against both engines (named as arguments, not looked up by name, so that
    the session knows this module uses both: `tests/engine_starts.py`)."""
    return gateway if request.param == "embedded" else remote_gateway


def answer(live: LiveGateway, **fields: Any) -> Any:
    extra = {k: fields.pop(k) for k in list(fields) if k not in ("max_tokens", "temperature", "n")}
    return ask(live, fields.pop("messages", QUESTION), extra_body=extra, **fields)


def choice_tokens(response: Any) -> list[int]:
    return response.choices[0].token_ids  # vLLM's response field, asked for by return_token_ids


def force_eos(tokens: Tokens) -> dict[str, float]:
    """A logit bias that makes the end-of-sequence token the only sensible choice."""
    return {str(tokens.eos): 100.0}


def ignore_eos(live: LiveGateway, tokens: Tokens) -> None:
    stopped = answer(live, max_tokens=6, logit_bias=force_eos(tokens))
    assert stopped.usage.completion_tokens == 1 and stopped.choices[0].finish_reason == "stop"
    kept_going = answer(live, max_tokens=6, logit_bias=force_eos(tokens), ignore_eos=True)
    assert kept_going.usage.completion_tokens == 6
    assert kept_going.choices[0].finish_reason == "length"


def min_tokens(live: LiveGateway, tokens: Tokens) -> None:
    response = answer(live, max_tokens=10, logit_bias=force_eos(tokens), min_tokens=4)
    assert response.usage.completion_tokens == 5  # four forced, then the end of sequence
    assert response.choices[0].finish_reason == "stop"


def top_k_one_is_greedy(live: LiveGateway, tokens: Tokens) -> None:
    greedy = answer(live, max_tokens=8, return_token_ids=True)
    sampled = answer(live, max_tokens=8, temperature=1.0, seed=3, top_k=1, return_token_ids=True)
    free = answer(live, max_tokens=8, temperature=1.0, seed=3, return_token_ids=True)
    assert choice_tokens(sampled) == choice_tokens(greedy)
    assert choice_tokens(free) != choice_tokens(greedy)  # so top_k is what made it greedy


def min_p_one_is_greedy(live: LiveGateway, tokens: Tokens) -> None:
    greedy = answer(live, max_tokens=8, return_token_ids=True)
    sampled = answer(live, max_tokens=8, temperature=1.0, seed=3, min_p=1.0, return_token_ids=True)
    assert choice_tokens(sampled) == choice_tokens(greedy)


def stop_token_ids(live: LiveGateway, tokens: Tokens) -> None:
    free = choice_tokens(answer(live, max_tokens=8, return_token_ids=True))
    stopped = answer(live, max_tokens=8, stop_token_ids=[free[2]], return_token_ids=True)
    assert choice_tokens(stopped) == free[: free.index(free[2]) + 1]
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].model_extra["stop_reason"] == free[2]


def allowed_token_ids(live: LiveGateway, tokens: Tokens) -> None:
    only = choice_tokens(answer(live, max_tokens=1, return_token_ids=True))[0] + 1
    response = answer(live, max_tokens=5, allowed_token_ids=[only], return_token_ids=True)
    assert choice_tokens(response) == [only] * 5


def repetition_penalty(live: LiveGateway, tokens: Tokens) -> None:
    # A token the bias makes certain stays certain only without a penalty on repeating it.
    bias = {str(tokens.eos + 7): 30.0}
    plain = choice_tokens(answer(live, max_tokens=6, logit_bias=bias, return_token_ids=True))
    penalized = choice_tokens(
        answer(live, max_tokens=6, logit_bias=bias, repetition_penalty=50.0, return_token_ids=True)
    )
    assert plain.count(tokens.eos + 7) > penalized.count(tokens.eos + 7)


def skip_special_tokens(live: LiveGateway, tokens: Tokens) -> None:
    fields = {"max_tokens": 3, "logit_bias": force_eos(tokens), "ignore_eos": True}
    assert answer(live, **fields).choices[0].message.content == ""
    shown = answer(live, **fields, skip_special_tokens=False).choices[0].message.content
    assert shown.replace(" ", "") == tokens.eos_text * 3


def add_generation_prompt(live: LiveGateway, tokens: Tokens) -> None:
    with_prompt = answer(live, max_tokens=1)
    without = answer(live, max_tokens=1, add_generation_prompt=False)
    assert without.usage.prompt_tokens < with_prompt.usage.prompt_tokens


def continue_final_message(live: LiveGateway, tokens: Tokens) -> None:
    messages = [*QUESTION, {"role": "assistant", "content": "It is"}]
    closed = answer(live, messages=messages, max_tokens=1)
    continued = answer(
        live,
        messages=messages,
        max_tokens=1,
        continue_final_message=True,
        add_generation_prompt=False,
    )
    assert continued.usage.prompt_tokens < closed.usage.prompt_tokens


def truncate_prompt_tokens(live: LiveGateway, tokens: Tokens) -> None:
    assert answer(live, max_tokens=1, truncate_prompt_tokens=5).usage.prompt_tokens == 5


def prompt_logprobs(live: LiveGateway, tokens: Tokens) -> None:
    response = answer(live, max_tokens=1, prompt_logprobs=1)
    logprobs = response.model_extra["prompt_logprobs"]
    assert len(logprobs) == response.usage.prompt_tokens and logprobs[0] is None


def max_completion_tokens(live: LiveGateway, tokens: Tokens) -> None:
    response = answer(live, max_completion_tokens=3, ignore_eos=True)
    assert response.usage.completion_tokens == 3


def guided_choice(live: LiveGateway, tokens: Tokens) -> None:
    choices = ["sunny", "rainy"]
    response = answer(live, max_tokens=8, structured_outputs={"choice": choices})
    assert response.choices[0].message.content in choices


def json_response_format(live: LiveGateway, tokens: Tokens) -> None:
    import json

    schema = {"type": "string", "enum": ["sunny", "rainy"]}
    response = answer(
        live,
        max_tokens=20,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    )
    assert json.loads(response.choices[0].message.content) in schema["enum"]


def with_an_image(live: LiveGateway, tokens: Tokens) -> None:
    messages = [image_message([data_url(picture(90))])]
    response = answer(live, messages=messages, max_tokens=4, ignore_eos=True, top_k=1)
    assert response.usage.completion_tokens == 4
    assert response.usage.crop["visual_tokens_full"] > 0


CASES: dict[str, Callable[[LiveGateway, Tokens], None]] = {
    "ignore_eos yields max_tokens tokens": ignore_eos,
    "min_tokens holds the end back": min_tokens,
    "top_k=1 equals greedy": top_k_one_is_greedy,
    "min_p=1 equals greedy": min_p_one_is_greedy,
    "stop_token_ids end the answer": stop_token_ids,
    "allowed_token_ids restrict the answer": allowed_token_ids,
    "repetition_penalty discourages repeats": repetition_penalty,
    "skip_special_tokens=false shows them": skip_special_tokens,
    "add_generation_prompt=false shortens the prompt": add_generation_prompt,
    "continue_final_message leaves the answer open": continue_final_message,
    "truncate_prompt_tokens keeps the last tokens": truncate_prompt_tokens,
    "prompt_logprobs come back": prompt_logprobs,
    "max_completion_tokens bounds the answer": max_completion_tokens,
    "structured_outputs choice constrains the answer": guided_choice,
    "response_format json_schema yields that JSON": json_response_format,
    "extensions apply to image requests too": with_an_image,
}


@pytest.mark.parametrize("case", CASES)
def test_a_vllm_request_field_takes_effect(case, live, tokens):
    CASES[case](live, tokens)
