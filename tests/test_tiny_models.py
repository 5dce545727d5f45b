"""The tiny random-weight checkpoints load in transformers and decode non-degenerately.

No vLLM engine here (engine tests live elsewhere); the vLLM-vs-transformers greedy check was
done by hand (see crop_vllm/testing/tiny_models.py).
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors import safe_open

from crop_vllm.testing.photos import noise, picture
from crop_vllm.testing.tiny_models import (
    ARCHES,
    MARKER_FILE,
    QWEN_FAMILIES,
    build_tiny_model,
    load_transformers_model,
    model_spec,
    suppressed_token_ids,
)

# Hub key layout: llava-hf checkpoints and Qwen/Qwen2.5-VL-*.
HUB_PREFIXES = {
    "llava": (
        "language_model.model.",
        "language_model.lm_head.",
        "multi_modal_projector.",
        "vision_tower.vision_model.",
    ),
    "llava_next": (
        "language_model.model.",
        "language_model.lm_head.",
        "multi_modal_projector.",
        "vision_tower.vision_model.",
        "image_newline",
    ),
    "qwen2_5_vl": ("model.", "lm_head.", "visual."),
    "qwen3_vl": ("model.language_model.", "model.visual.", "lm_head."),
    "qwen3_vl_moe": ("model.language_model.", "model.visual.", "lm_head."),
    # OpenGVLab/InternVL3_5-*: the remote-code InternVLChatModel's names.
    "internvl_chat": ("vision_model.", "mlp1.", "language_model.model.", "language_model.lm_head."),
}
# Visual tokens for one 224x224 image (Qwen3-VL scales it up to 256x256, its lower bound;
# InternVL cuts 2x2 tiles and adds a thumbnail).
TOKENS_224 = {
    "llava": 64,
    "llava_next": 2 * 8 * 2 * 8 + 2 * 8 + 8 * 8,
    "qwen2_5_vl": 64,
    "qwen3_vl": 64,
    "qwen3_vl_moe": 64,
    "internvl_chat": 5 * 64,
}
CPU_ATTN_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


@functools.cache
def _loaded(path: str, arch: str):
    """(processor, model, loading info); InternVL chat: (tokenizer, transformers' own InternVL
    loaded strictly from the renamed weights, no info)."""
    from transformers import AutoProcessor, AutoTokenizer

    from crop_vllm.testing.tiny_models import _model_class

    if arch == "internvl_chat":
        return AutoTokenizer.from_pretrained(path), load_transformers_model(arch, path), {}
    processor = AutoProcessor.from_pretrained(path)
    model, info = _model_class(arch).from_pretrained(path, output_loading_info=True)
    return processor, model.eval(), info


def tokenizer_of(processor):
    """A processor's tokenizer (InternVL chat checkpoints: `_loaded` gives the tokenizer)."""
    return getattr(processor, "tokenizer", processor)


@pytest.fixture(params=ARCHES)
def arch(request) -> str:
    return request.param


@pytest.fixture
def loaded(arch, tiny_checkpoint):
    return _loaded(str(tiny_checkpoint(arch)), arch)


def test_weights_use_the_hub_layout_and_load_without_missing_keys(arch, tiny_checkpoint, loaded):
    path = tiny_checkpoint(arch)
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert keys
    assert dtypes == {"F32"}
    assert all(k.startswith(HUB_PREFIXES[arch]) for k in keys), sorted(keys)[:5]
    _, model, info = loaded
    assert {k: v for k, v in info.items() if v} == {}
    lm_head = next(k for k in keys if "lm_head" in k)
    with safe_open(path / "model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor(lm_head), model.lm_head.weight)


def test_config_fits_vllm_cpu(arch, tiny_checkpoint, loaded):
    config = json.loads((tiny_checkpoint(arch) / "config.json").read_text())
    _, model, _ = loaded
    text = model.config.get_text_config()
    assert config["dtype"] == "float32"
    assert config["tie_word_embeddings"] is False
    assert not text.tie_word_embeddings
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert head_dim in CPU_ATTN_HEAD_SIZES
    assert text.num_hidden_layers == 4
    assert 64 <= text.hidden_size <= 128
    assert 256 <= text.vocab_size <= 1024
    if arch in QWEN_FAMILIES:
        assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
        vision = model.config.vision_config
        assert vision.out_hidden_size == text.hidden_size
        assert vision.depth == (2 if arch == "qwen2_5_vl" else 3)
    else:
        assert model.config.vision_config.num_hidden_layers == 2


def test_qwen3_vl_has_a_deepstack_level_for_each_of_the_first_three_llm_layers(tiny_checkpoint):
    for arch in ("qwen3_vl", "qwen3_vl_moe"):
        config = json.loads((tiny_checkpoint(arch) / "config.json").read_text())
        assert config["vision_config"]["deepstack_visual_indexes"] == [0, 1, 2]
        assert config["text_config"]["rope_parameters"]["mrope_interleaved"] is True
    moe = json.loads((tiny_checkpoint("qwen3_vl_moe") / "config.json").read_text())
    text = moe["text_config"]
    assert text["num_local_experts"] > text["num_experts_per_tok"] > 1


def test_special_tokens_match_the_config(arch, loaded):
    processor, model, _ = loaded
    tok = tokenizer_of(processor)
    config = model.config
    if arch == "internvl_chat":
        assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == config.image_token_id
        assert tok.eos_token == "<|im_end|>"
    elif arch in QWEN_FAMILIES:
        assert tok.convert_tokens_to_ids("<|image_pad|>") == config.image_token_id
        assert tok.convert_tokens_to_ids("<|video_pad|>") == config.video_token_id
        assert tok.convert_tokens_to_ids("<|vision_start|>") == config.vision_start_token_id
        assert tok.convert_tokens_to_ids("<|vision_end|>") == config.vision_end_token_id
        assert tok.eos_token == "<|im_end|>"
    else:
        assert tok.convert_tokens_to_ids("<image>") == config.image_token_index
        assert (tok.bos_token, tok.eos_token) == ("<s>", "</s>")
    assert len(tok) == config.get_text_config().vocab_size


def test_text_round_trips(loaded):
    tok = tokenizer_of(loaded[0])
    text = "What color is the car on the left? It's 42% blue, naïve café! \u263a"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text


def test_chat_template_renders_image_parts(arch, loaded):
    processor = loaded[0]
    content = [{"type": "image"}, {"type": "text", "text": "What is shown?"}]
    messages = [{"role": "user", "content": content}]
    url_messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "What is shown?"},
            ],
        }
    ]
    tokenizer = tokenizer_of(processor)
    for template_owner in {processor, tokenizer}:
        rendered = template_owner.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert rendered == tokenizer.apply_chat_template(
            url_messages, add_generation_prompt=True, tokenize=False
        )
    if arch == "internvl_chat":
        assert (
            rendered
            == "<|im_start|>user\n<image>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\n"
        )
    elif arch in QWEN_FAMILIES:
        assert "<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>" in rendered
        assert rendered.endswith("<|im_start|>assistant\n")
    else:
        assert rendered == "<s>USER: <image>\nWhat is shown? ASSISTANT:"


def chat_inputs(arch: str, processor, image) -> dict:
    """Model inputs for one image and a question, through the chat template. InternVL chat
    checkpoints have no HF processor: the reference's tiling and the `<img>` wrapping stand in."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": "What is shown in this image?"},
            ],
        }
    ]
    if arch != "internvl_chat":
        return processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
    from tests.reference_plc import internvl_tiling, to_pixels

    rows, cols = internvl_tiling(image.width, image.height, 112, 6)
    resized = image.resize((cols * 112, rows * 112))
    tiles = [
        resized.crop((c * 112, r * 112, (c + 1) * 112, (r + 1) * 112))
        for r in range(rows)
        for c in range(cols)
    ]
    tiles += [image.resize((112, 112))] if len(tiles) > 1 else []
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = text.replace("<image>", "<img>" + "<IMG_CONTEXT>" * 64 * len(tiles) + "</img>")
    inputs = processor(text, return_tensors="pt", add_special_tokens=False)
    return {**inputs, "pixel_values": torch.stack([to_pixels(t) for t in tiles])}


def test_generates_from_an_image_and_a_question(arch, loaded):
    processor, model, _ = loaded
    tokenizer = tokenizer_of(processor)
    inputs = chat_inputs(arch, processor, picture(0, 224, 224))
    prompt = inputs["input_ids"][0]
    assert int((prompt == model.config.image_token_id).sum()) == TOKENS_224[arch]
    if arch in ("llava", "llava_next"):  # exactly one BOS, written by the chat template
        assert prompt[0] == tokenizer.bos_token_id
        assert int((prompt == tokenizer.bos_token_id).sum()) == 1
    with torch.no_grad():
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=16,
            output_scores=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    assert len(tokens) == 16  # special tokens (EOS included) are never generated
    assert len(set(tokens)) > 1
    assert not set(tokens) & set(suppressed_token_ids(tokenizer))
    margins = [float(torch.topk(s[0], 2).values.diff().abs()) for s in out.scores]
    assert sorted(margins)[len(margins) // 2] > 1e-2
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    assert text.isprintable() and "\ufffd" not in text

    # The image matters: a very different image (random pixels) changes the continuation.
    other = chat_inputs(arch, processor, noise(7, 224, 224))
    with torch.no_grad():
        other_tokens = model.generate(**other, do_sample=False, max_new_tokens=16)
    assert other_tokens[0, -16:].tolist() != tokens


def test_larger_image_gives_more_qwen_tokens(tiny_checkpoint):
    processor = _loaded(str(tiny_checkpoint("qwen2_5_vl")), "qwen2_5_vl")[0]
    out = processor.image_processor(images=[picture(0, 448, 448)], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 32, 32]]  # 16x16 merged tokens


def test_build_is_idempotent(arch, tiny_checkpoint):
    path = tiny_checkpoint(arch)
    weights = path / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_tiny_model(arch, path) == path
    assert weights.stat().st_mtime_ns == before
    marker = json.loads((path / MARKER_FILE).read_text())
    assert marker["spec"] == model_spec(arch, "tiny")


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(FileExistsError):
        build_tiny_model("llava", tmp_path)


def test_rejects_unknown_arch_and_size():
    with pytest.raises(ValueError):
        model_spec("gpt2")
    with pytest.raises(ValueError):
        model_spec("llava", "huge")


@pytest.mark.parametrize("size", ["bench", "bench-1024"])
def test_bench_spec_sizes(size):
    for arch in ARCHES:
        text = model_spec(arch, size)["text"]
        assert 8 <= text["num_hidden_layers"] <= 12
        assert 512 <= text["hidden_size"] <= 1024
        assert text["hidden_size"] // text["num_attention_heads"] in CPU_ATTN_HEAD_SIZES
    clip = model_spec("llava", size)["vision"]
    assert (clip["image_size"] // clip["patch_size"]) ** 2 >= 256
