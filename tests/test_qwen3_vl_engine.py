"""Qwen3-VL specifics: ILP at every layer around the DeepStack levels (real engines), and CROP's
per-image regions through Qwen3-VL's per-video kwargs routing.

The tiny Qwen3-VL adds its three DeepStack levels after LLM layers 0, 1 and 2 (of 4): with K <= 2
the levels added after layers >= K must follow the kept rows. K = 2 (the default) runs compiled
with the other families in test_ilp_engine.py; here K = 0 (every level after the cut) compiled,
K = 1 and 3 eager in this process (compiling costs minutes per engine on CPU), one engine each,
prefill in 64-token chunks so that every image spans chunks.
"""

from __future__ import annotations

import pytest

from crop_vllm.layout import CropMode
from crop_vllm.options import CropSettings, ImagePlan
from crop_vllm.testing.photos import picture
from tests.engine_support import (
    BORDER,
    CROP_ARCH,
    MAX_TOKENS,
    ONE_CELL,
    QUARTER,
    assert_matches,
    assert_pruning_changes_the_answer,
    greedy,
    make_llm,
    make_prompt,
    request,
    shutdown,
)
from tests.reference_ilp import ReferenceILP

ARCH = "qwen3_vl"

#: name -> (crop_mode, region per image)
CASES = {
    "ilp-quarter": ("ilp", [QUARTER]),
    "plc+ilp-border": ("plc+ilp", [BORDER]),
    "ilp-two-images": ("ilp", [ONE_CELL, BORDER]),
    "plc+ilp-two-images-one-unpruned": ("plc+ilp", [None, QUARTER]),
}


@pytest.fixture(scope="module")
def images():
    return [picture(0), picture(1, 196, 224)]


@pytest.mark.engine
@pytest.mark.parametrize(("layer", "eager"), [(0, False), (1, True), (3, True)])
def test_ilp_at_layer_k_matches_the_reference(layer, eager, tiny_checkpoint, images):
    """ILP and PLC+ILP requests with a text-only one in one batch, each as the reference computes
    it with the same K (DeepStack levels after layers >= K only on the kept tokens)."""
    checkpoint = tiny_checkpoint(ARCH)
    llm = make_llm(
        checkpoint,
        CROP_ARCH[ARCH],
        hf_overrides={"crop_enable_ilp": True, "crop_ilp_layer": layer},
        enable_prefix_caching=False,
        enable_chunked_prefill=True,
        max_num_batched_tokens=64,
        enforce_eager=eager,
        in_process=eager,
    )
    try:
        requests = [
            request(
                ARCH,
                images[: len(regions)],
                f"What is on the left side? ({name})",
                crop_mode=mode,
                crop_regions=[None if r is None else r.as_list() for r in regions],
            )
            for name, (mode, regions) in CASES.items()
        ]
        text_only = {"prompt": make_prompt(ARCH, 0, "Tell me a story about a red car.")}
        outputs = greedy(llm, [*requests, text_only])
    finally:
        shutdown(llm)
    reference = ReferenceILP(ARCH, checkpoint, CropSettings(enable_ilp=True, ilp_layer=layer))
    for (name, (mode, regions)), output in zip(CASES.items(), outputs, strict=False):
        plans = [None if r is None else ImagePlan(CropMode(mode), r) for r in regions]
        prompt, pictures = list(output.prompt_token_ids), images[: len(regions)]
        expected = reference.generate_ilp(prompt, pictures, plans, MAX_TOKENS)
        assert_matches(output, expected, name)
        without_ilp = [None if p is None else p.without_ilp() for p in plans]
        unpruned = reference.generate_ilp(prompt, pictures, without_ilp, MAX_TOKENS)
        assert_pruning_changes_the_answer(expected, unpruned)
    assert len(outputs[-1].outputs[0].token_ids) == MAX_TOKENS


def test_a_partial_cache_hit_keeps_the_missing_images_regions_with_per_video_kwargs(
    tiny_checkpoint,
):
    """With per-video `fps`, Qwen3-VL re-routes the kwargs of the items a partial cache hit
    reprocesses into per-modality scopes; the CROP keys stay flat and keep the missing image's
    region only, so it is reprocessed with its own region."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.parse import MultiModalDataItems
    from vllm.multimodal.processing.inputs import ProcessorInputs

    import crop_vllm

    crop_vllm.register()
    model_config = ModelConfig(
        model=str(tiny_checkpoint(ARCH)),
        hf_overrides={"architectures": [CROP_ARCH[ARCH]]},
        dtype="float32",
        limit_mm_per_prompt={"image": 2, "video": 2},
    )
    processor = MULTIMODAL_REGISTRY.create_processor(model_config)
    inputs = ProcessorInputs(
        prompt=[],
        mm_data_items=MultiModalDataItems(),
        hf_processor_mm_kwargs={
            "crop_mode": "plc",
            "crop_regions": [QUARTER.as_list(), BORDER.as_list()],
            "fps": [2.0, 4.0],
        },
    )
    missing = processor._get_cache_missing_processor_kwargs(
        inputs, {"image": [True, False], "video": [False, True]}
    )
    assert missing["videos_kwargs"]["fps"] == [2.0]  # the scoped form
    assert missing["crop_regions"] == [BORDER.as_list()]
    assert missing["crop_mode"] == "plc"
