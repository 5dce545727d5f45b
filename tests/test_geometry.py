"""The grid geometry agrees with each family's own HF processor, for many image shapes."""

import pytest
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoProcessor

from crop_vllm.families import MODEL_TYPES
from crop_vllm.geometry import image_grids, num_image_tokens
from crop_vllm.layout import PLCSettings

SHAPES = [(224, 160), (160, 224), (112, 112), (300, 90), (64, 400), (224, 224), (333, 251)]


PLACEHOLDER = {
    "llava": "<image>",
    "llava_next": "<image>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
}


def hf_image_token_count(arch, checkpoint, image) -> int:
    """How many image tokens the HF processor expands one image into."""
    processor = AutoProcessor.from_pretrained(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint)
    ids = processor(text=PLACEHOLDER[arch], images=[image], return_tensors="pt")["input_ids"]
    return int((ids == config.image_token_id).sum())


@pytest.mark.parametrize("arch", ["llava", "llava_next", "qwen2_5_vl"])
@pytest.mark.parametrize("shape", SHAPES)
def test_unpruned_count_equals_the_hf_processors_expansion(arch, shape, tiny_checkpoint):
    checkpoint = tiny_checkpoint(arch)
    image = Image.new("RGB", shape, (90, 120, 200))
    config = AutoConfig.from_pretrained(checkpoint)
    processor = AutoImageProcessor.from_pretrained(checkpoint).to_dict()
    grids = image_grids(config, processor, image.height, image.width)
    assert num_image_tokens(grids, None, PLCSettings()) == hf_image_token_count(
        arch, checkpoint, image
    )


def test_every_family_has_at_least_an_8x8_grid(tiny_checkpoint):
    for arch in MODEL_TYPES:
        checkpoint = tiny_checkpoint(arch)
        config = AutoConfig.from_pretrained(checkpoint)
        processor = AutoImageProcessor.from_pretrained(checkpoint).to_dict()
        grids = image_grids(config, processor, 224, 224)
        assert all(g.rows >= 8 and g.cols >= 8 for g in grids), (arch, grids)


def test_unknown_family_is_refused():
    class Config:
        model_type = "gpt2"

    with pytest.raises(ValueError, match="CROP supports"):
        image_grids(Config(), {}, 10, 10)
