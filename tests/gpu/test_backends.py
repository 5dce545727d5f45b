"""PLC and ILP on one CUDA attention backend, bf16, against the fp32 transformers reference.

`make gpu-check` runs this file once per backend (`CROP_GPU_BACKEND`, see `VARIANTS`) on the
`bench` LLaVA-NeXT checkpoint (head_dim 64, which every backend supports): image tiles with row
separators, 64-token prefill chunks so images span chunks and the border and one-cell regions
give chunks that keep no token, and the engine compiled with piecewise CUDA graphs as CROP runs
it by default. bf16 and fp32 round differently, so tokens are compared until the reference's
top-2 margin falls below `MARGIN` (after a near tie either token is right), and at least
`MIN_COMPARED` of all steps must have been compared, so that the test cannot pass vacuously.
"""

from __future__ import annotations

import os

import pytest

from crop_vllm.options import CropSettings
from tests.engine_support import CROP_ARCH, make_llm, make_prompt
from tests.reference_ilp import ReferenceILP
from tests.test_ilp_engine import CASES, images, make_request, plan  # noqa: F401 (fixture)

pytestmark = pytest.mark.engine

#: Variant name -> engine arguments selecting the backend.
VARIANTS: dict[str, dict[str, object]] = {
    "FLASH_ATTN": {"attention_backend": "FLASH_ATTN"},  # FA3 on Hopper, FA2 elsewhere
    "FLASH_ATTN_FA2": {
        "attention_backend": "FLASH_ATTN",
        "attention_config": {"flash_attn_version": 2},
    },
    "TRITON_ATTN": {"attention_backend": "TRITON_ATTN"},
    "FLASHINFER": {"attention_backend": "FLASHINFER"},
    "FLEX_ATTENTION": {"attention_backend": "FLEX_ATTENTION"},
}
VARIANT = os.environ.get("CROP_GPU_BACKEND", "FLASH_ATTN")
ARCH = "llava_next"
#: Log-prob gap between the reference's two best tokens below which bf16 may pick either.
MARGIN = 0.5
#: bf16 against fp32 on the chosen token's log-prob, while tokens agree.
LOGPROB_TOLERANCE = 0.15
MIN_COMPARED = 0.5
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def checkpoint():
    from pathlib import Path

    from crop_vllm.testing.tiny_models import build_tiny_model

    return build_tiny_model(ARCH, Path(__file__).parents[1] / ".cache" / "bench" / ARCH, "bench")


@pytest.fixture(scope="module")
def engine(checkpoint):
    from tests.engine_support import shutdown

    llm = make_llm(
        checkpoint,
        CROP_ARCH[ARCH],
        hf_overrides={"crop_enable_ilp": True},
        dtype="bfloat16",
        enable_prefix_caching=False,
        enable_chunked_prefill=True,
        max_num_batched_tokens=64,
        max_model_len=4096,
        compilation_config={"cudagraph_capture_sizes": [1, 2, 4, 8, 16]},
        worker_extension_cls="tests.ilp_probe.IlpProbe",
        **VARIANTS[VARIANT],
    )
    yield llm
    shutdown(llm)


@pytest.fixture(scope="module")
def reference(checkpoint):
    return ReferenceILP(ARCH, checkpoint, CropSettings(enable_ilp=True))


def compared_steps(output, expected) -> tuple[int, int]:
    """(steps compared, steps in all) for one request; fails on a mismatch before a near tie."""
    from tests.engine_support import chosen_logprobs

    tokens = list(output.outputs[0].token_ids)
    compared = 0
    for token, logprob, want, want_logprob, margin in zip(
        tokens, chosen_logprobs(output), expected.token_ids, expected.logprobs, expected.margins,
        strict=True,
    ):  # fmt: skip
        if margin < MARGIN:
            break
        assert token == want
        assert abs(logprob - want_logprob) < LOGPROB_TOLERANCE
        compared += 1
    return compared, len(tokens)


def check(outputs, names, images, reference) -> tuple[int, int]:  # noqa: F811
    compared = total = 0
    for name, output in zip(names, outputs, strict=True):
        mode, regions = CASES[name]
        count = 1 if regions is None else len(regions)
        plans = [plan(mode, r) for r in (regions or [None])]
        expected = reference.generate_ilp(
            list(output.prompt_token_ids), images[:count], plans, MAX_TOKENS
        )
        done, steps = compared_steps(output, expected)
        compared, total = compared + done, total + steps
    return compared, total


def greedy(llm, requests):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logprobs=1)
    return llm.generate(requests, params, use_tqdm=False)


def test_the_engine_runs_the_backend_asked_for(engine):
    (names,) = engine.collective_rpc("attention_backends")
    wanted = VARIANTS[VARIANT]["attention_backend"]
    assert names == [wanted], names


def test_a_mixed_batch_matches_the_fp32_reference(engine, reference, images):  # noqa: F811
    names = list(CASES)
    requests = [make_request(ARCH, images, name) for name in names]
    text_only = {"prompt": make_prompt(ARCH, 0, "Tell me a story about a red car.")}
    outputs = greedy(engine, [*requests, text_only])
    compared, total = check(outputs[:-1], names, images, reference)
    assert compared >= MIN_COMPARED * total, (compared, total)


def test_chunks_that_keep_no_token_run(engine, reference, images):  # noqa: F811
    names = ["ilp-border", "ilp-one-cell"]
    for name in names:
        outputs = greedy(engine, [make_request(ARCH, images, name)])
        compared, total = check(outputs, [name], images, reference)
        assert compared >= MIN_COMPARED * total, (name, compared, total)


def test_the_ilp_build_leaves_the_stock_metadata_untouched(engine, images):  # noqa: F811
    (before,) = engine.collective_rpc("ilp_probe_report")
    greedy(engine, [make_request(ARCH, images, n) for n in ("ilp-border", "no-crop")])
    (after,) = engine.collective_rpc("ilp_probe_report")
    assert after["checks"] > before["checks"]
    assert after["violations"] == []
