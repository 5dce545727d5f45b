"""PLC inside real vLLM engines, per family: identity, savings, reference equivalence, caching.

The engines are the ILP engine matrix's CPU_ATTN engines (`tests/engine_fixtures.py`: compiled,
ILP enabled, prefill in 64-token chunks), which serve PLC and CROP-off requests as any CROP
engine does; the PLC-only refusal of ILP modes and PLC under prefix caching (vLLM's default) run
on one engine with ILP off.
"""

from __future__ import annotations

import pytest

from crop_vllm.families import family
from crop_vllm.layout import FULL_IMAGE, CropMode, PLCSettings, Region
from crop_vllm.options import CropSettings
from crop_vllm.testing.photos import picture
from server.accounting import ModelGeometry
from tests.engine_fixtures import CPU_ATTN_MATRIX, matrix_id
from tests.engine_support import (
    BORDER,
    CROP_ARCH,
    ONE_CELL,
    QUARTER,
    assert_matches,
    assert_pruning_changes_the_answer,
    greedy,
    make_llm,
    request,
    shutdown,
    stock_prompt_token_ids,
)
from tests.reference_plc import ReferencePLC

pytestmark = pytest.mark.engine

#: A test on every family's matrix engine.
on_each_family = pytest.mark.parametrize(
    "matrix_case", CPU_ATTN_MATRIX, indirect=True, scope="session", ids=matrix_id
)


def predicted_tokens(arch, checkpoint, image, region: Region | None) -> int:
    """The visual tokens the gateway's accounting reports for `image` after PLC."""
    geometry = ModelGeometry.load(str(checkpoint), CropSettings(), family(arch).remote_code)
    return geometry.image_tokens(image.width, image.height, region, CropMode.PLC).after_plc


@pytest.fixture(scope="module")
def arch(matrix_case) -> str:
    return matrix_case[0]


@pytest.fixture(scope="module")
def images():
    return [picture(0), picture(1, 196, 224), picture(2, 224, 224)]


@on_each_family
def test_crop_off_is_stock_vllm(arch, tiny_checkpoint, matrix_engine, images):
    """Without a region, with `crop_mode=off`, or with a `None` region, the prompt is the one
    stock vLLM's processor makes and the answer (tokens and log-probs) the unpruned
    reference's: what the stock model computes."""
    checkpoint = tiny_checkpoint(arch)
    requests = [
        request(arch, [images[0]], "What is in the picture?"),
        request(
            arch, [images[1]], "Describe it.", crop_mode="off", crop_regions=[QUARTER.as_list()]
        ),
        request(arch, [images[2]], "Where?", crop_regions=[None]),
    ]
    outputs = greedy(matrix_engine, requests)
    reference = ReferencePLC(arch, checkpoint, PLCSettings())
    for index, (prompt, output) in enumerate(zip(requests, outputs, strict=True)):
        image = images[index]
        assert list(output.prompt_token_ids) == stock_prompt_token_ids(arch, checkpoint, prompt)
        expected = reference.generate(
            list(output.prompt_token_ids), [image], [None], len(output.outputs[0].token_ids)
        )
        assert_matches(output, expected, index)


@on_each_family
def test_quarter_region_saves_exactly_the_predicted_tokens(
    arch, tiny_checkpoint, matrix_engine, images
):
    checkpoint = tiny_checkpoint(arch)
    image = images[0]
    base, pruned = greedy(
        matrix_engine,
        [
            request(arch, [image], "What color is the car?"),
            request(arch, [image], "What color is the car?", crop_regions=[QUARTER.as_list()]),
        ],
        logprobs=False,
    )
    full = predicted_tokens(arch, checkpoint, image, None)
    kept = predicted_tokens(arch, checkpoint, image, QUARTER)
    assert kept < full
    assert len(base.prompt_token_ids) - len(pruned.prompt_token_ids) == full - kept


CASES = {
    "quarter": [QUARTER],
    "border": [BORDER],
    "one-cell": [ONE_CELL],
    "full-image": [FULL_IMAGE],
    "two-images": [QUARTER, BORDER],
    "two-images-one-unpruned": [None, ONE_CELL],
}


@on_each_family
def test_greedy_tokens_and_logprobs_match_the_reference(
    arch, tiny_checkpoint, matrix_engine, images
):
    """Each case equals the reference; the reference's answer with pruning differs from its
    answer without (the full-image region prunes nothing: there they are the same)."""
    reference = ReferencePLC(arch, tiny_checkpoint(arch), PLCSettings())
    requests = {
        name: request(
            arch,
            images[: len(regions)],
            "What is on the left side?",
            crop_regions=[None if r is None else r.as_list() for r in regions],
        )
        for name, regions in CASES.items()
    }
    outputs = dict(zip(requests, greedy(matrix_engine, list(requests.values())), strict=True))
    for name, regions in CASES.items():
        output = outputs[name]
        expected = reference.generate(
            list(output.prompt_token_ids),
            images[: len(regions)],
            regions,
            len(output.outputs[0].token_ids),
        )
        assert_matches(output, expected, name)
        unpruned = reference.generate(
            reference.unpruned_prompt(list(output.prompt_token_ids), images[: len(regions)]),
            images[: len(regions)],
            [None] * len(regions),
            len(expected.token_ids),
        )
        if regions == [FULL_IMAGE]:
            assert unpruned == expected, name
        else:
            assert_pruning_changes_the_answer(expected, unpruned)


@on_each_family
def test_processor_cache_keeps_each_images_region(arch, tiny_checkpoint, matrix_engine, images):
    """A partial cache hit reprocesses only the missing image, with its own region."""
    llm = matrix_engine
    first, second = images[0], images[1]
    cold = [BORDER, QUARTER]
    warm = [BORDER, ONE_CELL]  # image 0 hits the cache, image 1 misses with another region
    greedy(llm, [request(arch, [first, second], "Q?", crop_regions=[r.as_list() for r in cold])])
    (output,) = greedy(
        llm, [request(arch, [first, second], "Q?", crop_regions=[r.as_list() for r in warm])]
    )
    reference = ReferencePLC(arch, tiny_checkpoint(arch), PLCSettings())
    expected = reference.generate(list(output.prompt_token_ids), [first, second], warm, 16)
    assert list(output.outputs[0].token_ids) == expected.token_ids


@on_each_family
def test_same_image_with_two_regions_in_one_request(arch, tiny_checkpoint, matrix_engine, images):
    """Two copies of one image with different regions are pruned independently."""
    checkpoint = tiny_checkpoint(arch)
    image = images[0]
    regions = [QUARTER, BORDER]
    base, pruned = greedy(
        matrix_engine,
        [
            request(arch, [image, image], "Q?"),
            request(arch, [image, image], "Q?", crop_regions=[r.as_list() for r in regions]),
        ],
    )
    full = predicted_tokens(arch, checkpoint, image, None)
    kept = [predicted_tokens(arch, checkpoint, image, r) for r in regions]
    assert len(base.prompt_token_ids) - len(pruned.prompt_token_ids) == 2 * full - sum(kept)
    reference = ReferencePLC(arch, checkpoint, PLCSettings())
    expected = reference.generate(list(pruned.prompt_token_ids), [image, image], regions, 16)
    assert list(pruned.outputs[0].token_ids) == expected.token_ids


@pytest.fixture(scope="module")
def plc_only_engine(tiny_checkpoint):
    """The tiny LLaVA with ILP off and prefix caching on (vLLM's default) in 32-token blocks
    (CPU's default 128 is longer than these prompts), eager in this process. One family is
    enough for validation: it is shared by every family and unit-tested (test_options.py)."""
    llm = make_llm(
        tiny_checkpoint("llava"),
        CROP_ARCH["llava"],
        in_process=True,
        enforce_eager=True,
        block_size=32,
    )
    yield llm
    shutdown(llm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"crop_regions": [[0, 0, 2, 1]]}, "in \\[0, 1\\]"),
        ({"crop_regions": [[0.5, 0, 0.2, 1]]}, "x0 <= x1"),
        ({"crop_regions": [[0, 0, 1, 1], None]}, "2 entries"),
        ({"crop_mode": "fast"}, "crop_mode must be one of"),
        ({"crop_mode": "ilp", "crop_regions": [[0, 0, 1, 1]]}, "not supported"),
    ],
)
def test_invalid_crop_options_are_rejected_and_the_engine_keeps_serving(
    kwargs, message, plc_only_engine
):
    image = picture(0)
    with pytest.raises(ValueError, match=message):
        greedy(plc_only_engine, [request("llava", [image], "Q?", **kwargs)], logprobs=False)
    (output,) = greedy(plc_only_engine, [request("llava", [image], "Q?")], logprobs=False)
    assert len(output.outputs[0].token_ids) > 0


def test_under_prefix_caching_a_cached_image_keeps_each_requests_region(
    tiny_checkpoint, plc_only_engine
):
    """Prefix caching on: the same prompt and image with another region (or none) is pruned by
    its own region, never served from the blocks of the earlier one."""
    image = picture(0)
    reference = ReferencePLC("llava", tiny_checkpoint("llava"), PLCSettings())
    question = "Which colors are in the picture, from left to right?"
    outputs = []
    for regions in ([QUARTER], [BORDER], [None], [QUARTER]):
        kwargs = {"crop_regions": [None if r is None else r.as_list() for r in regions]}
        (output,) = greedy(plc_only_engine, [request("llava", [image], question, **kwargs)])
        expected = reference.generate(list(output.prompt_token_ids), [image], regions, 16)
        assert_matches(output, expected, regions)
        outputs.append(output)
    assert outputs[-1].num_cached_tokens > 0, "nothing was served from the prefix cache"
