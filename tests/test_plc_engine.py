"""PLC inside real vLLM engines, per family: identity, savings, reference equivalence, caching."""

from __future__ import annotations

import pytest

from crop_vllm.families import MODEL_TYPES, family
from crop_vllm.layout import FULL_IMAGE, CropMode, PLCSettings, Region
from crop_vllm.options import CropSettings
from crop_vllm.testing.photos import picture
from server.accounting import ModelGeometry
from tests.engine_support import (
    BORDER,
    ONE_CELL,
    QUARTER,
    STOCK_ARCH,
    assert_matches,
    assert_pruning_changes_the_answer,
    greedy,
    make_llm,
    request,
    shutdown,
)
from tests.reference_plc import ReferencePLC

pytestmark = pytest.mark.engine

ARCHES = MODEL_TYPES


def predicted_tokens(arch, checkpoint, image, region: Region | None) -> int:
    """The visual tokens the gateway's accounting reports for `image` after PLC."""
    geometry = ModelGeometry.load(str(checkpoint), CropSettings(), family(arch).remote_code)
    return geometry.image_tokens(image.width, image.height, region, CropMode.PLC).after_plc


@pytest.fixture(scope="module", params=ARCHES)
def arch(request):
    return request.param


@pytest.fixture(scope="module")
def images():
    return [picture(0), picture(1, 196, 224), picture(2, 224, 224)]


def test_crop_off_matches_stock_vllm(arch, tiny_checkpoint, crop_engine, images):
    checkpoint = tiny_checkpoint(arch)
    requests = [
        request(arch, [images[0]], "What is in the picture?"),
        request(
            arch, [images[1]], "Describe it.", crop_mode="off", crop_regions=[QUARTER.as_list()]
        ),
        request(arch, [images[2]], "Where?", crop_regions=[None]),
    ]
    crop_outputs = greedy(crop_engine(arch), requests, logprobs=False)
    stock = make_llm(checkpoint, STOCK_ARCH[arch])
    try:
        plain = [{k: v for k, v in r.items() if k != "mm_processor_kwargs"} for r in requests]
        stock_outputs = greedy(stock, plain, logprobs=False)
    finally:
        shutdown(stock)
    for crop_out, stock_out in zip(crop_outputs, stock_outputs, strict=True):
        assert crop_out.prompt_token_ids == stock_out.prompt_token_ids
        assert crop_out.outputs[0].token_ids == stock_out.outputs[0].token_ids


def test_quarter_region_saves_exactly_the_predicted_tokens(
    arch, tiny_checkpoint, crop_engine, images
):
    checkpoint = tiny_checkpoint(arch)
    image = images[0]
    base, pruned = greedy(
        crop_engine(arch),
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


def test_greedy_tokens_and_logprobs_match_the_reference(arch, tiny_checkpoint, crop_engine, images):
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
    outputs = dict(zip(requests, greedy(crop_engine(arch), list(requests.values())), strict=True))
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


def test_processor_cache_keeps_each_images_region(arch, tiny_checkpoint, crop_engine, images):
    """A partial cache hit reprocesses only the missing image, with its own region."""
    llm = crop_engine(arch)
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


def test_same_image_with_two_regions_in_one_request(arch, tiny_checkpoint, crop_engine, images):
    """Two copies of one image with different regions are pruned independently."""
    checkpoint = tiny_checkpoint(arch)
    image = images[0]
    regions = [QUARTER, BORDER]
    base, pruned = greedy(
        crop_engine(arch),
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
    arch, kwargs, message, crop_engine, images
):
    llm = crop_engine(arch)
    with pytest.raises(ValueError, match=message):
        greedy(llm, [request(arch, [images[0]], "Q?", **kwargs)], logprobs=False)
    (output,) = greedy(llm, [request(arch, [images[0]], "Q?")], logprobs=False)
    assert len(output.outputs[0].token_ids) > 0
