"""The grid geometry agrees with each family's own HF processor, for many image shapes."""

import pytest
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from crop_vllm.families import MODEL_TYPES, family
from crop_vllm.geometry import image_grids, image_processor_settings, num_image_tokens
from crop_vllm.layout import PLCSettings
from crop_vllm.testing.tiny_models import IMAGE_PLACEHOLDERS

SHAPES = [(224, 160), (160, 224), (112, 112), (300, 90), (64, 400), (224, 224), (333, 251)]


def load_config(checkpoint, arch):
    return AutoConfig.from_pretrained(checkpoint, trust_remote_code=family(arch).remote_code)


def hf_image_token_count(arch, checkpoint, image) -> int:
    """How many image tokens the HF processor expands one image into (InternVL chat checkpoints
    have none: vLLM's InternVL image processor cuts the tiles, of 256 tokens at 448 px)."""
    config = load_config(checkpoint, arch)
    if arch == "internvl_chat":
        from vllm.transformers_utils.processors.internvl import image_to_pixel_values_internvl

        tiles = image_to_pixel_values_internvl(
            image,
            input_size=config.vision_config.image_size,
            min_num=config.min_dynamic_patch,
            max_num=config.max_dynamic_patch,
            use_thumbnail=config.use_thumbnail,
        )
        vision = config.vision_config
        per_tile = (vision.image_size // vision.patch_size) ** 2 * config.downsample_ratio**2
        return len(tiles) * int(per_tile)
    processor = AutoProcessor.from_pretrained(checkpoint)
    text = IMAGE_PLACEHOLDERS[arch].strip()
    ids = processor(text=text, images=[image], return_tensors="pt")["input_ids"]
    return int((ids == config.image_token_id).sum())


@pytest.mark.parametrize("arch", MODEL_TYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_unpruned_count_equals_the_hf_processors_expansion(arch, shape, tiny_checkpoint):
    checkpoint = tiny_checkpoint(arch)
    image = Image.new("RGB", shape, (90, 120, 200))
    config = load_config(checkpoint, arch)
    processor = image_processor_settings(checkpoint, config)
    grids = image_grids(config, processor, image.height, image.width)
    assert num_image_tokens(grids, None, PLCSettings()) == hf_image_token_count(
        arch, checkpoint, image
    )


def test_every_family_has_at_least_an_8x8_grid(tiny_checkpoint):
    for arch in MODEL_TYPES:
        checkpoint = tiny_checkpoint(arch)
        config = load_config(checkpoint, arch)
        processor = image_processor_settings(checkpoint, config)
        grids = image_grids(config, processor, 224, 224)
        assert all(g.rows >= 8 and g.cols >= 8 for g in grids), (arch, grids)


def test_unknown_family_is_refused():
    class Config:
        model_type = "gpt2"

    with pytest.raises(ValueError, match="CROP supports"):
        image_grids(Config(), {}, 10, 10)
