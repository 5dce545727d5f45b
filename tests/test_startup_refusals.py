"""What the CROP engine refuses at startup for the Qwen3-VL and InternVL families, with a
message that says what to change: settings under which PLC would be skipped or pool the wrong
channels (encoder CUDA graphs, video token pruning), and compiled ILP on their Qwen3 language
models."""

from __future__ import annotations

import pytest

from tests.engine_support import CROP_ARCH, make_llm

FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "internvl_chat")


@pytest.mark.parametrize("arch", FAMILIES)
def test_encoder_cuda_graphs_are_refused(arch, tiny_checkpoint):
    with pytest.raises(ValueError, match="remove cudagraph_mm_encoder"):
        make_llm(
            tiny_checkpoint(arch),
            CROP_ARCH[arch],
            compilation_config={"cudagraph_mm_encoder": True},
        )


@pytest.mark.parametrize("arch", FAMILIES)
def test_video_token_pruning_is_refused(arch, tiny_checkpoint):
    with pytest.raises(ValueError, match="video-pruning-rate"):
        make_llm(tiny_checkpoint(arch), CROP_ARCH[arch], video_pruning_rate=0.5)


@pytest.mark.parametrize("arch", FAMILIES)
def test_compiled_ilp_on_a_qwen3_language_model_is_refused(arch, tiny_checkpoint):
    with pytest.raises(ValueError, match="run it eager"):
        make_llm(tiny_checkpoint(arch), CROP_ARCH[arch], hf_overrides={"crop_enable_ilp": True})
