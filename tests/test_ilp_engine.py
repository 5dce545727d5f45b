"""ILP inside real vLLM engines: reference equivalence, identity, metadata isolation, refusals.

The engines are the engine matrix (`tests/engine_fixtures.py`): one ILP engine per family on
CPU_ATTN, compiled, and LLaVA-NeXT on FLEX_ATTENTION through the test-only adaptations in
`tests/flex_on_cpu.py` (FLEX's metadata builder keeps persistent state: the class of backend,
with FlashInfer, where ILP's metadata build could overwrite the stock one). Prefill runs in
64-token chunks, so every image spans chunks and LLaVA-NeXT's border and one-cell regions give
chunks that keep no token. Every engine runs the stock-metadata invariant check of
`tests/ilp_probe.py`.
"""

from __future__ import annotations

import pytest

from crop_vllm.layout import FULL_IMAGE, CropMode, Region
from crop_vllm.options import CropSettings, ImagePlan
from crop_vllm.testing.photos import picture
from tests.engine_fixtures import ILP_OVERRIDES
from tests.engine_support import (
    BORDER,
    CROP_ARCH,
    LOGPROB_TOLERANCE,
    ONE_CELL,
    QUARTER,
    assert_matches,
    chosen_logprobs,
    greedy,
    make_prompt,
    request,
)
from tests.reference_ilp import ReferenceILP

pytestmark = pytest.mark.engine

#: Pruning must move the reference's log-probs by far more than the engine may differ from it.
PRUNING_EFFECT = 10 * LOGPROB_TOLERANCE
#: What summation order alone may change in float32 log-probs.
FLOAT_NOISE = 1e-4


@pytest.fixture(scope="module")
def arch(matrix_case) -> str:
    return matrix_case[0]


@pytest.fixture(scope="module")
def images():
    return [picture(0), picture(1, 196, 224), picture(2, 224, 224)]


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
    prompt = list(output.prompt_token_ids)
    expected = reference.generate_ilp(
        prompt, images[:count], plans, len(output.outputs[0].token_ids)
    )
    assert_matches(output, expected, name)
    if any(p is not None and p.mode.uses_ilp for p in plans):
        # Layers >= K see fewer tokens: the reference without ILP must answer differently, or
        # this comparison could not tell ILP from no pruning at all.
        unpruned = reference.generate_ilp(
            prompt, images[:count], [None if p is None else p.without_ilp() for p in plans], 16
        )
        assert differs(expected, unpruned), name


def differs(first, second) -> bool:
    """Whether two generations differ by far more than the engine-vs-reference tolerance."""
    if first.token_ids != second.token_ids:
        return True
    return max(abs(a - b) for a, b in zip(first.logprobs, second.logprobs, strict=True)) > (
        PRUNING_EFFECT
    )


def test_mixed_batch_matches_the_reference(arch, tiny_checkpoint, matrix_engine, images):
    """ILP, PLC+ILP, PLC-only, off and text-only requests of different lengths in one batch,
    prefilled in 64-token chunks; 16 greedy tokens each, as the reference computes them."""
    names = list(CASES)
    requests = [make_request(arch, images, name) for name in names]
    text_only = {"prompt": make_prompt(arch, 0, "Tell me a story about a red car.")}
    outputs = greedy(matrix_engine, [*requests, text_only])
    reference = ReferenceILP(arch, tiny_checkpoint(arch), CropSettings(enable_ilp=True))
    for name, output in zip(names, outputs, strict=False):
        check_against_reference(reference, arch, images, name, output)
    (text_alone,) = greedy(matrix_engine, [text_only])
    assert text_alone.outputs[0].token_ids == outputs[-1].outputs[0].token_ids


def test_steps_that_keep_no_token_match_the_reference(arch, tiny_checkpoint, matrix_engine):
    """A request alone whose image, outside its one-cell region, fills whole 64-token chunks:
    those steps keep no token (layers >= K run one placeholder row), and the answer is still the
    reference's."""
    if arch == "llava":
        pytest.skip("LLaVA-1.5's 64 image tokens follow text: no chunk is image tokens alone")
    large = picture(3, 512, 512)
    (before,) = matrix_engine.collective_rpc("ilp_probe_report")
    alone = request(
        arch, [large], "What is here?", crop_mode="ilp", crop_regions=[ONE_CELL.as_list()]
    )
    (output,) = greedy(matrix_engine, [alone])
    (after,) = matrix_engine.collective_rpc("ilp_probe_report")
    assert 0 in after["kept_tokens"][len(before["kept_tokens"]) :]
    reference = ReferenceILP(arch, tiny_checkpoint(arch), CropSettings(enable_ilp=True))
    check_against_reference(reference, arch, [large], "ilp-one-cell", output)


def test_the_ilp_build_leaves_the_stock_metadata_untouched(arch, matrix_engine, images):
    """Every tensor the stock step's metadata holds is bit-identical after ILP built its own
    metadata in the same step (numerics-free: it fails on a shared stateful builder)."""
    (before,) = matrix_engine.collective_rpc("ilp_probe_report")
    greedy(matrix_engine, [make_request(arch, images, n) for n in ("ilp-border", "no-crop")])
    (after,) = matrix_engine.collective_rpc("ilp_probe_report")
    assert after["checks"] > before["checks"]
    assert after["tensors"] > before["tensors"]
    assert after["violations"] == []


def test_each_request_alone_matches_its_run_in_the_batch(arch, matrix_engine, images):
    """Batch composition does not change an ILP request's tokens (compaction is per request)."""
    names = ["ilp-border", "plc+ilp-quarter"]
    batch = greedy(matrix_engine, [make_request(arch, images, n) for n in [*names, "no-crop"]])
    for name, in_batch in zip(names, batch, strict=False):
        (alone,) = greedy(matrix_engine, [make_request(arch, images, name)])
        assert alone.outputs[0].token_ids == in_batch.outputs[0].token_ids, name


def test_full_image_region_gives_exactly_the_unpruned_output(arch, matrix_engine, images):
    """Nothing lies outside the full image: ILP drops nothing and the step is the stock one
    (each run alone, so that both see the same batch shape; FLEX sums over the KV cache in
    physical block order, so its two runs may differ by float noise)."""
    question = "What is on the left side?"
    region = [FULL_IMAGE.as_list()]
    (full,) = greedy(
        matrix_engine, [request(arch, [images[0]], question, crop_mode="ilp", crop_regions=region)]
    )
    (plain,) = greedy(matrix_engine, [request(arch, [images[0]], question)])
    assert full.outputs[0].token_ids == plain.outputs[0].token_ids
    assert chosen_logprobs(full) == pytest.approx(chosen_logprobs(plain), abs=FLOAT_NOISE)


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
        (
            {
                "enable_prefix_caching": True,
                "hf_overrides": {
                    "architectures": [CROP_ARCH["llava"]],
                    **ILP_OVERRIDES,
                    "crop_ilp_compact_kv": False,
                },
            },
            "no-enable-prefix-caching",
        ),
        ({"compilation_config": {"cudagraph_mode": "FULL"}}, "use PIECEWISE"),
        ({"enable_lora": True}, "remove --enable-lora"),
        (
            {"kv_transfer_config": {"kv_connector": "x", "kv_role": "kv_both"}},
            "remove --kv-transfer-config",
        ),
        ({"kv_offloading_size": 1.0}, "--kv-offloading-size"),
        ({"attention_backend": "TREE_ATTN"}, "TREE_ATTN"),
        ({"disable_hybrid_kv_cache_manager": True}, "remove --disable-hybrid-kv-cache-manager"),
        ({"scheduler_cls": "my.Scheduler"}, "'my.Scheduler': remove it"),
        ({"mm_processor_cache_type": "shm"}, "--mm-processor-cache-type lru"),
    ],
    ids=[
        "prefix-caching-without-kv-saving",
        "full-cudagraphs",
        "lora",
        "kv-connector",
        "kv-offloading",
        "backend",
        "no-hybrid-kv-manager",
        "foreign-scheduler",
        "shm-mm-cache",
    ],
)
def test_unsafe_engine_settings_are_refused_at_startup(overrides, message, tiny_checkpoint):
    """Each setting ILP cannot run under stops the engine before it starts, naming the fix."""
    from vllm import LLM

    kwargs = {
        "model": str(tiny_checkpoint("llava")),
        "hf_overrides": {"architectures": [CROP_ARCH["llava"]], **ILP_OVERRIDES},
        "dtype": "float32",
        "max_model_len": 2048,
        **overrides,
    }
    with pytest.raises(ValueError, match=message):
        LLM(**kwargs)
