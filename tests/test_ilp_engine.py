"""ILP inside real vLLM engines (CPU attention backend): reference equivalence, identity, refusal.

One ILP engine per family (chunked prefill forced to 64-token chunks, so every image spans
chunks), shared by the tests of that family; one stock-configured refusal check.
"""

from __future__ import annotations

import pytest

from crop_vllm.layout import FULL_IMAGE, CropMode, Region
from crop_vllm.options import CropSettings, ImagePlan
from tests.engine_support import (
    BORDER,
    CROP_ARCH,
    LOGPROB_TOLERANCE,
    ONE_CELL,
    QUARTER,
    assert_matches_the_ilp_reference,
    chosen_logprobs,
    greedy,
    make_llm,
    make_prompt,
    request,
    shutdown,
    test_image,
)
from tests.reference_ilp import ReferenceILP

pytestmark = pytest.mark.engine

ARCHES = ("llava", "qwen2_5_vl", "llava_next", "qwen3_vl", "qwen3_vl_moe", "internvl_chat")
ILP_OVERRIDES = {"crop_enable_ilp": True}
#: Small chunks: every image's placeholders span several prefill steps.
CHUNK_TOKENS = 64


@pytest.fixture(scope="module", params=ARCHES)
def arch(request):
    return request.param


def make_ilp_llm(tiny_checkpoint, arch: str, **engine_args):
    """An ILP engine on `arch`'s tiny checkpoint, prefill forced into CHUNK_TOKENS-token chunks."""
    return make_llm(
        tiny_checkpoint(arch),
        CROP_ARCH[arch],
        hf_overrides=ILP_OVERRIDES,
        enable_prefix_caching=False,
        enable_chunked_prefill=True,
        max_num_batched_tokens=CHUNK_TOKENS,
        **engine_args,
    )


@pytest.fixture(scope="module")
def ilp_engine(arch, tiny_checkpoint, crop_engine):
    """An ILP engine for `arch` (the session's CROP engine is shut down first: one at a time)."""
    crop_engine(None)
    llm = make_ilp_llm(tiny_checkpoint, arch)
    yield llm
    shutdown(llm)


@pytest.fixture(scope="module")
def images():
    return [test_image(0), test_image(1, (196, 224)), test_image(2, (224, 224))]


def plan(mode: str, region: Region | None) -> ImagePlan | None:
    return None if mode == "off" or region is None else ImagePlan(CropMode(mode), region)


#: name -> (crop_mode, regions per image); None regions: no CROP kwargs at all.
CASES = {
    "ilp-quarter": ("ilp", [QUARTER]),
    "ilp-border": ("ilp", [BORDER]),
    "ilp-one-cell": ("ilp", [ONE_CELL]),
    "plc+ilp-quarter": ("plc+ilp", [QUARTER]),
    "plc+ilp-border": ("plc+ilp", [BORDER]),
    "ilp-two-images": ("ilp", [QUARTER, BORDER]),
    "plc+ilp-two-images-one-unpruned": ("plc+ilp", [None, ONE_CELL]),
    "plc-only": ("plc", [QUARTER]),
    "off": ("off", [QUARTER]),
    "no-crop": ("off", None),
}


def make_request(arch, images, name):
    mode, regions = CASES[name]
    count = 1 if regions is None else len(regions)
    question = f"What is on the left side? ({name})"
    if regions is None:
        return request(arch, images[:count], question)
    return request(
        arch,
        images[:count],
        question,
        crop_mode=mode,
        crop_regions=[None if r is None else r.as_list() for r in regions],
    )


def check_against_reference(reference, arch, images, name, output):
    mode, regions = CASES[name]
    count = 1 if regions is None else len(regions)
    plans = [plan(mode, r) for r in (regions or [None])]
    assert_matches_the_ilp_reference(reference, output, images[:count], plans)


def test_mixed_batch_matches_the_reference(arch, tiny_checkpoint, ilp_engine, images):
    """ILP, PLC+ILP, PLC-only, off and text-only requests of different lengths in one batch,
    prefilled in 64-token chunks; 16 greedy tokens each, as the reference computes them."""
    names = list(CASES)
    requests = [make_request(arch, images, name) for name in names]
    text_only = {"prompt": make_prompt(arch, 0, "Tell me a story about a red car.")}
    outputs = greedy(ilp_engine, [*requests, text_only])
    reference = ReferenceILP(arch, tiny_checkpoint(arch), CropSettings(enable_ilp=True))
    for name, output in zip(names, outputs, strict=False):
        check_against_reference(reference, arch, images, name, output)
    assert len(outputs[-1].outputs[0].token_ids) == 16


def test_each_request_alone_matches_its_run_in_the_batch(arch, ilp_engine, images):
    """Batch composition does not change an ILP request's tokens (compaction is per request)."""
    names = ["ilp-border", "plc+ilp-quarter"]
    batch = greedy(ilp_engine, [make_request(arch, images, n) for n in [*names, "no-crop"]])
    for name, in_batch in zip(names, batch, strict=False):
        (alone,) = greedy(ilp_engine, [make_request(arch, images, name)])
        assert alone.outputs[0].token_ids == in_batch.outputs[0].token_ids, name


def test_full_image_region_gives_exactly_the_unpruned_output(arch, ilp_engine, images):
    """Nothing lies outside the full image: ILP drops nothing and the step is the stock one
    (each run alone, so that both see the same batch shape and kernels bit for bit)."""
    question = "What is on the left side?"
    region = [FULL_IMAGE.as_list()]
    (full,) = greedy(
        ilp_engine, [request(arch, [images[0]], question, crop_mode="ilp", crop_regions=region)]
    )
    (plain,) = greedy(ilp_engine, [request(arch, [images[0]], question)])
    assert full.outputs[0].token_ids == plain.outputs[0].token_ids
    assert chosen_logprobs(full) == chosen_logprobs(plain)


def test_layer_beyond_the_last_leaves_the_model_stock():
    """With K past the last decoder layer there is nothing to prune: no hooks, no runner work."""
    from torch import nn

    from crop_vllm.ilp.controller import IlpController

    layers = nn.ModuleList(nn.Identity() for _ in range(4))
    settings = CropSettings(ilp_layer=4, enable_ilp=True)
    assert IlpController.maybe_create(layers, settings, None) is None
    assert IlpController.maybe_create(layers, CropSettings(ilp_layer=1), None) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"enable_prefix_caching": True}, "no-enable-prefix-caching"),
        ({"enable_prefix_caching": False, "enforce_eager": False}, "enforce-eager"),
    ],
)
def test_unsafe_engine_settings_are_refused_at_startup(overrides, message, tiny_checkpoint):
    from vllm import LLM

    kwargs = {
        "model": str(tiny_checkpoint("llava")),
        "hf_overrides": {"architectures": [CROP_ARCH["llava"]], **ILP_OVERRIDES},
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 2048,
        **overrides,
    }
    with pytest.raises(ValueError, match=message):
        LLM(**kwargs)


def test_preempted_ilp_requests_recompute_to_the_reference(tiny_checkpoint, crop_engine, images):
    """A KV cache of a few 128-token blocks: four ILP requests that each outgrow one block
    preempt each other; after recompute every one still equals the uninterrupted reference."""
    arch = "llava"
    crop_engine(None)
    llm = make_ilp_llm(
        tiny_checkpoint,
        arch,
        num_gpu_blocks_override=5,
        max_model_len=512,
        disable_log_stats=False,
    )
    try:
        tokenizer = llm.get_tokenizer()
        image_tokens = 64  # the tiny LLaVA's 8x8 grid; "<image>" is one token of the prompt
        words = []
        # Prompts of about 120 tokens: one 128-token block each, a second one while decoding.
        while len(tokenizer.encode(make_prompt(arch, 1, " ".join(words)))) + image_tokens < 121:
            words.append("left")
        regions = [QUARTER, BORDER, ONE_CELL, QUARTER]
        requests = [
            request(
                arch,
                [images[i % 3]],
                " ".join(words),
                crop_mode="ilp",
                crop_regions=[region.as_list()],
            )
            for i, region in enumerate(regions)
        ]
        outputs = greedy(llm, requests)
        preemptions = sum(
            metric.value for metric in llm.get_metrics() if metric.name == "vllm:num_preemptions"
        )
    finally:
        shutdown(llm)
    assert preemptions > 0, "the test did not preempt: shrink the KV cache"
    reference = ReferenceILP(arch, tiny_checkpoint(arch), CropSettings(enable_ilp=True))
    for index, (output, region) in enumerate(zip(outputs, regions, strict=True)):
        assert len(output.prompt_token_ids) <= 128 < len(output.prompt_token_ids) + 16
        expected = reference.generate_ilp(
            list(output.prompt_token_ids), [images[index % 3]], [plan("ilp", region)], 16
        )
        assert list(output.outputs[0].token_ids) == expected.token_ids, index
        worst = max(
            abs(a - b) for a, b in zip(chosen_logprobs(output), expected.logprobs, strict=True)
        )
        assert worst < LOGPROB_TOLERANCE, (index, worst)
