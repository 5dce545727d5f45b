"""Engine settings under which PLC (every CROP engine) would be silently wrong are refused when the
engine's config is built, with a message that says what to change."""

import pytest

from crop_vllm.families import family
from tests.engine_support import CROP_ARCH

#: Qwen3-VL (dense, MoE) and InternVL: every refusal.
NEW_FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "internvl_chat")


@pytest.mark.parametrize(
    ("arch", "settings", "message"),
    [
        (
            "qwen2_5_vl",
            {"compilation_config": {"cudagraph_mm_encoder": True}},
            "cudagraph_mm_encoder",
        ),
        (
            "llava",
            {"compilation_config": {"cudagraph_mm_encoder": True}},
            "embed_multimodal, where PLC",
        ),
        ("qwen2_5_vl", {"video_pruning_rate": 0.5}, "remove it on a CROP engine"),
        *(
            case
            for arch in NEW_FAMILIES
            for case in (
                (arch, {"compilation_config": {"cudagraph_mm_encoder": True}}, "cudagraph_mm"),
                (arch, {"video_pruning_rate": 0.5}, "remove it on a CROP engine"),
            )
        ),
    ],
    ids=[
        "qwen-encoder-cuda-graphs",
        "llava-encoder-cuda-graphs",
        "qwen-video-pruning",
        *(f"{arch}-{what}" for arch in NEW_FAMILIES for what in ("encoder-cuda-graphs", "video")),
    ],
)
def test_settings_that_would_skip_or_corrupt_plc_are_refused(
    arch, settings, message, tiny_checkpoint
):
    from vllm import LLM

    with pytest.raises(ValueError, match=message):
        LLM(
            model=str(tiny_checkpoint(arch)),
            hf_overrides={"architectures": [CROP_ARCH[arch]]},
            dtype="float32",
            max_model_len=2048,
            trust_remote_code=family(arch).remote_code,
            **settings,
        )
