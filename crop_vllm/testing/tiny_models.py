"""Small random-weight VLM checkpoints that both transformers and vLLM load, built offline.

    python -m crop_vllm.testing.tiny_models --arch llava --out DIR [--size tiny|bench|bench-1024]

writes a Hugging Face checkpoint directory (config.json, float32 safetensors in the hub key
layout via `save_pretrained`, a locally trained byte-level BPE tokenizer with the family's
special tokens and chat template, and the processor / image-processor configs) for one of
`ARCHES`. Nothing is downloaded: the tokenizer is trained on an embedded corpus and the
weights are drawn from a seeded generator, so a build is deterministic.

Sizes (visual tokens for one image; vision_feature_layer -2 and the "default" strategy for the
CLIP-based families, so CLS is dropped):

* ``tiny`` (CI): 2-layer vision tower with hidden 64 (Qwen3-VL: 3 layers, one DeepStack level
  each), 4-layer LLM (Llama / Qwen2 / Qwen3, Qwen3-VL-MoE with 4 experts, 2 per token) with
  hidden 128 and head_dim 32, vocab 1024. A 224x224 image gives an 8x8 grid of visual cells:
  llava 64 tokens (CLIP 112px, patch 14); llava_next 336 (2x2 AnyRes tiles of 8x8, unpadded to
  16x16, + 16 newline tokens + the 8x8 base image); qwen2_5_vl 64 (16x16 patches merged 2x2; up
  to 448x448 -> 256 tokens); qwen3_vl(_moe) 64 (scaled up to 256x256, patch 16 merged 2x2; up
  to 512x512 -> 256); internvl_chat 320 (112 px tiles of 8x8 tokens: 2x2 tiles + thumbnail;
  224x160 -> 3x2 tiles + thumbnail, 448).
* ``bench`` (CPU benchmark): 4-layer vision tower with hidden 256, 12-layer LLM with hidden 768
  and head_dim 64. llava: 224x224 -> 256 tokens (16x16); llava_next: 224x224 -> 528 (1x2 tiles
  of 16x16 unpadded to 16x16 + 16 newlines + 256 base), 448x448 -> 1312; qwen2_5_vl: 448x448
  -> 256 tokens (16x16 merged), up to 672x672 -> 576; qwen3_vl(_moe): 448x448 -> 196 (14x14),
  up to 1024x1024 -> 1024; internvl_chat: 224 px tiles of 16x16 tokens, 448x448 -> 2x2 tiles
  + thumbnail, 1280.
* ``bench-1024``: ``bench`` with the LLM at hidden 1024 (16 heads of 64), the spec's upper
  bound, for checking how CROP's gains grow with the LLM's share of the work.

Weights are not the transformers default init (std 0.02 gives near-uniform logits whose greedy
argmax is decided by float noise): every matrix is drawn with std 1/sqrt(fan_in), embeddings
with std 1, and the LM head so that logits have a standard deviation of about 8 (top-1/top-2
margins are typically 0.1-5, far above float32 noise). The LM-head rows of special tokens (EOS,
image placeholders, chat markers) and of tokens that decode to unprintable text are zero, so
greedy decoding never emits them: outputs always run to ``max_tokens`` and decode to printable
text.

The llava chat template writes the BOS token itself and the tokenizer adds none, so vLLM's chat
path (add_special_tokens=False), ``LLM.generate`` on the rendered text and the HF processor all
see the same ids. Checked by hand against vLLM 0.32 (CPU, float32): for an image + question,
vLLM's 16 greedy tokens equal transformers' ``generate(do_sample=False)`` for every arch (for
internvl_chat: transformers' native InternVL on the renamed weights, `load_transformers_model`).

`build_tiny_model` is idempotent: the directory gets a marker file with a hash of the spec (and
of this file's source), and a directory with a matching marker is returned as is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from crop_vllm.families import MODEL_TYPES

ARCHES = MODEL_TYPES  # one tiny checkpoint recipe per CROP family
SIZES = ("tiny", "bench", "bench-1024")

# Part of the spec; the spec hash also covers this file's source, so edits rebuild caches.
_FORMAT_VERSION = 1
MARKER_FILE = "crop_tiny_model.json"
_VOCAB_SIZE = 1024
_LOGIT_STD = 8.0

# Files a complete checkpoint must hold (besides the marker).
_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)

# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

_CLIP_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 112,
    "patch_size": 14,
}
_CLIP_BENCH = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 14,
}
_LLM_TINY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
_LLM_BENCH = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
}
_LLM_BENCH_1024 = {
    **_LLM_BENCH,
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_attention_heads": 16,
}
_LLMS = {"tiny": _LLM_TINY, "bench": _LLM_BENCH, "bench-1024": _LLM_BENCH_1024}
_QWEN_VISION_TINY = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "fullatt_block_indexes": [1],
}
_QWEN_VISION_BENCH = {
    "depth": 4,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_heads": 4,
    "fullatt_block_indexes": [1, 3],
}
# Qwen3-VL: patch 16 (merge 2: 32 px per LLM token) and three deepstack levels, as the released
# models (which tap blocks [5, 11, 17] of 24, or [8, 16, 24] of 27); here every block is tapped,
# so the deepstack features enter after LLM layers 0, 1 and 2 of 4 (12 in `bench`).
_QWEN3_VISION_TINY = {
    "depth": 3,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "num_position_embeddings": 256,
    "deepstack_visual_indexes": [0, 1, 2],
}
_QWEN3_VISION_BENCH = {
    "depth": 4,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_heads": 4,
    "num_position_embeddings": 1024,
    "deepstack_visual_indexes": [1, 2, 3],
}
#: The MoE variant replaces each LLM layer's MLP by routed experts of this size (never equal to
#: the hidden size, nor twice it: transformers tells the hub's expert layout from its own by shape).
_QWEN3_MOE_TINY = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 96}
_QWEN3_MOE_BENCH = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 640}
# InternVL (InternViT + pixel shuffle 0.5 + MLP projector): tiles of 112 px with patch 7 give
# 16x16 patches, 8x8 LLM tokens per tile, as the released 448 px / patch 14 tiles give 16x16.
_INTERN_VISION_TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 112,
    "patch_size": 7,
}
_INTERN_VISION_BENCH = {
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "image_size": 224,
    "patch_size": 7,
}
QWEN_FAMILIES = ("qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
QWEN3_FAMILIES = ("qwen3_vl", "qwen3_vl_moe")


def model_spec(arch: str, size: str = "tiny") -> dict[str, Any]:
    """The JSON-serializable recipe of one checkpoint (what the marker hash covers)."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
    tiny = size == "tiny"
    llm = dict(_LLMS[size])
    spec: dict[str, Any] = {
        "format_version": _FORMAT_VERSION,
        "arch": arch,
        "size": size,
        "seed": 1234 + ARCHES.index(arch),
        "vocab_size": _VOCAB_SIZE,
        "logit_std": _LOGIT_STD,
        "text": llm,
    }
    if arch in ("llava", "llava_next"):
        clip = dict(_CLIP_TINY if tiny else _CLIP_BENCH)
        spec["vision"] = clip
        spec["vision_feature_layer"] = -2
        if arch == "llava_next":
            tile = clip["image_size"]
            # 1x2, 2x1 or 2x2 tiles (HF's select_best_resolution: the most effective resolution,
            # then the least padding): a square image larger than one tile takes 2x2, one at
            # most a tile wide 1x2 (tiny: 224x224 -> 2x2; bench: 224x224 -> 1x2, 448 -> 2x2).
            spec["image_grid_pinpoints"] = [
                [tile, 2 * tile],
                [2 * tile, tile],
                [2 * tile, 2 * tile],
            ]
    elif arch in QWEN3_FAMILIES:
        vision = dict(_QWEN3_VISION_TINY if tiny else _QWEN3_VISION_BENCH)
        vision.update(patch_size=16, spatial_merge_size=2, temporal_patch_size=2)
        spec["vision"] = vision
        head_dim = llm["hidden_size"] // llm["num_attention_heads"]
        half = head_dim // 2
        # Same proportions as Qwen3-VL's interleaved [24, 20, 20] for head_dim 128.
        spec["mrope_section"] = [3 * half // 8, 5 * half // 16, 5 * half // 16]
        if arch == "qwen3_vl_moe":
            # norm_topk_prob as in the released configs: vLLM reads it, transformers' Qwen3-VL
            # MoE router always normalizes the top-k weights.
            spec["moe"] = dict(_QWEN3_MOE_TINY if tiny else _QWEN3_MOE_BENCH, norm_topk_prob=True)
        # Qwen3-VL's own lower bound (256x256 pixels: smaller images are scaled up). tiny:
        # 224x224 -> 256x256 (8x8 tokens), at most 512x512 -> 16x16; bench: 448x448 -> 14x14,
        # at most 1024x1024 -> 32x32.
        spec["min_pixels"] = 256 * 256
        spec["max_pixels"] = (512 * 512) if tiny else (1024 * 1024)
    elif arch == "internvl_chat":
        spec["vision"] = dict(_INTERN_VISION_TINY if tiny else _INTERN_VISION_BENCH)
        # 1 to 6 tiles plus a thumbnail (the released models allow 12): tiny 224x160 -> 3x2
        # tiles (16x24 cells) + an 8x8 thumbnail, 224x224 -> 2x2 + thumbnail.
        spec["max_dynamic_patch"] = 6
    else:
        vision = dict(_QWEN_VISION_TINY if tiny else _QWEN_VISION_BENCH)
        vision.update(
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,  # pixels: 112 / 14 / 2 = 4x4 merged cells per window
        )
        spec["vision"] = vision
        head_dim = llm["hidden_size"] // llm["num_attention_heads"]
        half = head_dim // 2
        # Same proportions as Qwen2.5-VL's [16, 24, 24] for head_dim 128.
        spec["mrope_section"] = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]
        # tiny: 224x224 -> 16x16 patches (8x8 merged), at most 448x448 -> 16x16 merged.
        # bench: 448x448 -> 32x32 patches (16x16 merged), at most 672x672 -> 24x24 merged.
        factor = 28
        spec["min_pixels"] = 4 * factor * factor
        spec["max_pixels"] = (448 * 448) if tiny else (672 * 672)
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    """Hash of the spec, this module's source and the library versions that shape the files.

    The source is included so that an edited recipe never reuses a stale cached checkpoint
    (a tiny rebuild takes about a second).
    """
    import tokenizers
    import transformers

    payload = {
        "spec": spec,
        "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

_CORPUS = """\
What is shown in this image? Describe the image in detail.
What color is the car on the left side of the picture?
How many people are standing near the red door?
Is there a dog in the photo? Yes, there is a small brown dog sitting on the grass.
What is written on the sign above the shop? The sign says open from nine to five.
Where is the cat? The cat is sleeping on the blue sofa next to the window.
What time does the clock show? The clock on the wall shows a quarter past three.
Which animal is the largest in the picture? The elephant is the largest animal.
What is the man holding in his right hand? He is holding a cup of coffee.
Can you read the text in the top right corner of the document?
What is the title of the book on the table? The title is printed in large letters.
How many windows does the building have? The building has twelve windows.
What is the weather like in this scene? It looks sunny with a few white clouds.
What are the children playing with? They are playing with a green ball in the park.
Describe the small object in the bottom left corner of the image.
Is the traffic light red, yellow or green? The traffic light is green.
What kind of food is on the plate? There is rice, chicken and some vegetables.
What is the number on the jersey of the player? The number is twenty three.
What brand is the laptop on the desk? The logo on the laptop is not clear.
Where was this photo taken? It seems to be taken in a busy city street at night.
What is the price of the apples according to the label? The label says two dollars.
Look at the chart. Which year had the highest value? The highest value was in the last year.
What does the graph show? The graph shows the number of visitors for each month.
Answer the question using a single word or phrase.
Please answer with a short sentence. What is the woman wearing?
The woman is wearing a long black coat and a white hat.
There are three birds flying over the lake and a boat near the shore.
A tall tree stands behind the house, and a yellow bicycle leans against the fence.
The image shows a kitchen with a wooden table, four chairs and a bowl of fruit.
The street is wet after the rain and the lights are reflected on the road.
A person is riding a horse on the beach while the sun is setting.
The screen displays a table with names, dates and amounts of money.
In the middle of the photo there is a white cup on a red plate.
Two men are talking in front of a train station; one of them carries a bag.
The mountain in the background is covered with snow and the sky is clear.
What is the name of the street on the blue sign? The name of the street is Main Street.
How many cars are parked in front of the building? I can count five cars.
Is the person on the right smiling? Yes, the person on the right is smiling.
What is the color of the umbrella? The umbrella is purple with white dots.
What is the boy eating? The boy is eating an ice cream.
Read the phone number on the truck. The number is written under the company name.
What shape is the table? The table is round and made of glass.
Which way is the arrow pointing? The arrow points to the right.
What is the temperature shown on the display? It shows twenty one degrees.
Is it day or night? It is night, and the moon is visible above the trees.
The quick brown fox jumps over the lazy dog.
user assistant system question answer image picture photo video region crop zoom detail
one two three four five six seven eight nine ten eleven twelve first second third last
red orange yellow green blue purple pink brown black white gray grey gold silver
left right top bottom center middle above below behind front inside outside near far
small large big tiny huge long short tall wide narrow old new young bright dark
man woman boy girl child people person dog cat bird horse cow sheep car bus truck train
table chair sofa bed door window wall floor road street sign light tree flower grass sky
water river lake sea beach mountain city house building shop school park station
book paper letter word text number price date name title label chart graph table map
0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 30 50 100 2023 2024 $ % + - = / : ; , . ! ? ' " ( )
"""

_LLAVA_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
_QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# LLaVA-1.5 style: "<s>USER: <image>\n<question> ASSISTANT:". Content may be a string or a list
# of OpenAI-style parts; image parts ("image" or "image_url") are rendered first, as in the hub's
# llava-hf templates, then the text parts. The template writes the BOS token and the tokenizer
# does not add one, so every path tokenizes the same ids: vLLM's chat path (which tokenizes with
# add_special_tokens=False), `LLM.generate` on the rendered text (add_special_tokens=True) and
# the HF processor.
_LLAVA_CHAT_TEMPLATE = (
    "{{- '<s>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{{ ' ' }}"
    "{%- else -%}"
    "{{ message['role'].upper() + ': ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ['image', 'image_url', 'image_pil', 'image_embeds'] -%}"
    "{{ '<image>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ '</s>' }}{%- else -%}{{ ' ' }}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# Qwen2-VL / Qwen2.5-VL hub template (image parts -> <|vision_start|><|image_pad|><|vision_end|>).
_QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_INTERNVL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
)


def _chatml_template(image: str) -> str:
    """ChatML without a default system turn (Qwen3-VL's and InternVL's hub templates), each
    image part rendered as `image`."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        + image
        + "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


#: The prompt text that stands for one image, per family (what chat templates render).
IMAGE_PLACEHOLDERS = {
    "llava": "<image>\n",
    "llava_next": "<image>\n",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl_moe": "<|vision_start|><|image_pad|><|vision_end|>",
    "internvl_chat": "<image>\n",
}


def chat_prompt(arch: str, num_images: int, question: str) -> str:
    """One user turn with `num_images` images and a question, as the family's chat template
    renders it (the prompt text `LLM.generate` takes)."""
    images = IMAGE_PLACEHOLDERS[arch] * num_images
    if arch in ("llava", "llava_next"):
        return f"USER: {images}{question} ASSISTANT:"
    return f"<|im_start|>user\n{images}{question}<|im_end|>\n<|im_start|>assistant\n"


def _train_bpe(specials: tuple[str, ...], vocab_size: int):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _CORPUS.splitlines(keepends=True)
    # Repeat so that frequent pairs dominate rare ones deterministically.
    tok.train_from_iterator(lines * 4, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


def build_tokenizer(family: str):
    """A PreTrainedTokenizerFast for one of `ARCHES` (llava and llava_next share one)."""
    from transformers import PreTrainedTokenizerFast

    if family in ("llava", "llava_next"):
        # No BOS post-processor: the chat template writes "<s>" (see _LLAVA_CHAT_TEMPLATE).
        tok = _train_bpe(_LLAVA_SPECIALS, _VOCAB_SIZE)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            chat_template=_LLAVA_CHAT_TEMPLATE,
            model_max_length=4096,
            clean_up_tokenization_spaces=False,
            padding_side="left",
        )
    if family in QWEN_FAMILIES or family == "internvl_chat":
        specials = _INTERNVL_SPECIALS if family == "internvl_chat" else _QWEN_SPECIALS
        template = (
            _QWEN_CHAT_TEMPLATE
            if family == "qwen2_5_vl"
            else _chatml_template(IMAGE_PLACEHOLDERS[family])
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=_train_bpe(specials, _VOCAB_SIZE),
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            chat_template=template,
            model_max_length=32768,
            clean_up_tokenization_spaces=False,
            padding_side="left",
        )
    raise ValueError(f"unknown family {family!r}")


# --------------------------------------------------------------------------------------------
# Config, processor, weights
# --------------------------------------------------------------------------------------------


def _build_config(spec: dict[str, Any], tokenizer):
    import torch

    arch = spec["arch"]
    vocab = len(tokenizer)
    text = spec["text"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if arch in ("llava", "llava_next"):
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

        vision = spec["vision"]
        vision_config = CLIPVisionConfig(
            **vision,
            projection_dim=vision["hidden_size"],
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            dtype=torch.float32,
        )
        text_config = LlamaConfig(
            vocab_size=vocab,
            **text,
            head_dim=head_dim,
            max_position_embeddings=4096,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
            dtype=torch.float32,
        )
        grid = vision["image_size"] // vision["patch_size"]
        common = dict(
            vision_config=vision_config,
            text_config=text_config,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_seq_length=grid * grid,
            projector_hidden_act="gelu",
            vision_feature_select_strategy="default",
            vision_feature_layer=spec["vision_feature_layer"],
            tie_word_embeddings=False,
            dtype=torch.float32,
        )
        if arch == "llava":
            config = LlavaConfig(**common)
        else:
            config = LlavaNextConfig(**common, image_grid_pinpoints=spec["image_grid_pinpoints"])
        config.architectures = [
            "LlavaForConditionalGeneration"
            if arch == "llava"
            else "LlavaNextForConditionalGeneration"
        ]
        return config

    if arch in QWEN3_FAMILIES:
        return _qwen3_vl_config(spec, tokenizer)
    if arch == "internvl_chat":
        return internvl_native_config(_internvl_chat_config(spec, tokenizer), tokenizer)

    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    vision = dict(spec["vision"])
    vision_config = dict(
        **vision,
        in_channels=3,
        hidden_act="silu",
        out_hidden_size=text["hidden_size"],
        tokens_per_second=2,
    )
    text_config = dict(
        vocab_size=vocab,
        **text,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": spec["mrope_section"],
        },
        use_sliding_window=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    config = Qwen2_5_VLConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype=torch.float32,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def _qwen3_vl_config(spec: dict[str, Any], tokenizer):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    text = spec["text"]
    text_config = dict(
        vocab_size=len(tokenizer),
        **text,
        **spec.get("moe", {}),
        head_dim=text["hidden_size"] // text["num_attention_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": spec["mrope_section"],
            "mrope_interleaved": True,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    vision_config = dict(
        **spec["vision"],
        in_channels=3,
        hidden_act="gelu_pytorch_tanh",
        out_hidden_size=text["hidden_size"],
    )
    moe = spec["arch"] == "qwen3_vl_moe"
    config = (Qwen3VLMoeConfig if moe else Qwen3VLConfig)(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype=torch.float32,
    )
    config.architectures = [
        "Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"
    ]
    return config


# --------------------------------------------------------------------------------------------
# InternVL chat checkpoints
# --------------------------------------------------------------------------------------------
# The released InternVL3 / 3.5 checkpoints (`model_type: internvl_chat`, served by vLLM's
# `InternVLChatModel`) bring their config and model classes as remote code. The tiny checkpoint
# has the same config.json fields and weight names, with a config module of our own; its weights
# are drawn through transformers' native InternVL model (the same architecture: InternViT, pixel
# shuffle, MLP projector, LLM), whose parameters map one to one onto the chat layout (the
# vision attention's q, k and v are fused into one `qkv` there).

INTERNVL_CONFIG_MODULE = "configuration_internvl_chat"
_INTERNVL_CONFIG_SOURCE = '''"""The config class of InternVL chat checkpoints (internvl_chat).

Written by crop_vllm.testing.tiny_models into its tiny checkpoints: released checkpoints ship a
remote-code config class under this name; this one reads the same config.json fields.
"""

from transformers import AutoConfig, PretrainedConfig


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"

    def __init__(self, vision_config=None, llm_config=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(vision_config, PretrainedConfig):
            vision_config = InternVisionConfig(**(vision_config or {}))
        if not isinstance(llm_config, PretrainedConfig):
            llm = dict(llm_config or {"model_type": "qwen3"})
            llm_config = AutoConfig.for_model(llm.pop("model_type"), **llm)
        self.vision_config = vision_config
        self.llm_config = llm_config
'''


def _internvl_chat_config(spec: dict[str, Any], tokenizer) -> dict[str, Any]:
    """config.json of the InternVL chat checkpoint (InternVL3.5 layout: a Qwen3 LLM)."""
    from transformers import Qwen3Config

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _INTERNVL_SPECIALS}
    text = spec["text"]
    llm = Qwen3Config(
        vocab_size=len(tokenizer),
        **text,
        head_dim=text["hidden_size"] // text["num_attention_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    llm.architectures = ["Qwen3ForCausalLM"]
    vision = spec["vision"]
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": f"{INTERNVL_CONFIG_MODULE}.InternVLChatConfig"},
        "model_type": "internvl_chat",
        "vision_config": {
            **vision,
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "num_channels": 3,
            "qkv_bias": True,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu",
            "initializer_factor": 0.1,
            "use_flash_attn": False,
            "dtype": "float32",
        },
        "llm_config": llm.to_dict(),
        "select_layer": -1,
        "force_image_size": vision["image_size"],
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "template": "internvl2_5",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": spec["max_dynamic_patch"],
        "tie_word_embeddings": False,
        "dtype": "float32",
    }


def internvl_native_config(chat_config: dict[str, Any], tokenizer):
    """transformers' own `InternVLConfig` for an InternVL chat config.json (the same model)."""
    import torch
    from transformers import InternVLConfig, InternVLVisionConfig

    vision = chat_config["vision_config"]
    side, patch = vision["image_size"], vision["patch_size"]
    ratio = chat_config["downsample_ratio"]
    return InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=vision["hidden_size"],
            intermediate_size=vision["intermediate_size"],
            num_hidden_layers=vision["num_hidden_layers"],
            num_attention_heads=vision["num_attention_heads"],
            image_size=(side, side),
            patch_size=(patch, patch),
            attention_bias=vision["qkv_bias"],
            use_qk_norm=vision["qk_normalization"],
            norm_type=vision["norm_type"],
            layer_norm_eps=vision["layer_norm_eps"],
            hidden_act=vision["hidden_act"],
            layer_scale_init_value=vision["initializer_factor"],
            use_mean_pooling=True,  # no final norm, as InternViT
        ),
        text_config=chat_config["llm_config"],
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=int((side // patch) ** 2 * ratio**2),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=chat_config["select_layer"],
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
        dtype=torch.float32,
    )


_INTERNVL_RENAMES = (
    (r"^model\.vision_tower\.embeddings\.cls_token$", "vision_model.embeddings.class_embedding"),
    (
        r"^model\.vision_tower\.embeddings\.patch_embeddings\.projection\.",
        "vision_model.embeddings.patch_embedding.",
    ),
    (
        r"^model\.vision_tower\.embeddings\.position_embeddings$",
        "vision_model.embeddings.position_embedding",
    ),
    (r"^model\.vision_tower\.encoder\.layer\.", "vision_model.encoder.layers."),
    (r"\.attention\.[qkv]_proj\.", ".attn.qkv."),
    (r"\.attention\.projection_layer\.", ".attn.proj."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.lambda_1$", ".ls1"),
    (r"\.lambda_2$", ".ls2"),
    (r"^model\.multi_modal_projector\.layer_norm\.", "mlp1.0."),
    (r"^model\.multi_modal_projector\.linear_1\.", "mlp1.1."),
    (r"^model\.multi_modal_projector\.linear_2\.", "mlp1.3."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
)


def internvl_chat_key(native_key: str) -> str:
    """The InternVL chat checkpoint's name of a transformers InternVL parameter."""
    for pattern, replacement in _INTERNVL_RENAMES:
        native_key = re.sub(pattern, replacement, native_key)
    return native_key


def _qkv_index(native_key: str) -> int | None:
    """0, 1, 2 for the vision attention's q, k, v projections (fused in the chat layout)."""
    match = re.search(r"\.attention\.([qkv])_proj\.", native_key)
    return None if match is None else "qkv".index(match.group(1))


def internvl_to_chat_layout(native: dict[str, Any]) -> dict[str, Any]:
    """transformers InternVL weights -> InternVL chat checkpoint weights."""
    import torch

    chat: dict[str, Any] = {}
    fused: dict[str, list] = {}
    for key, tensor in native.items():
        index = _qkv_index(key)
        if index is None:
            chat[internvl_chat_key(key)] = tensor
        else:
            fused.setdefault(internvl_chat_key(key), [None] * 3)[index] = tensor
    chat.update({key: torch.cat(parts) for key, parts in fused.items()})
    return chat


def internvl_from_chat_layout(chat: dict[str, Any], native_keys: list[str]) -> dict[str, Any]:
    """InternVL chat checkpoint weights -> the transformers InternVL parameters `native_keys`."""
    native = {}
    for key in native_keys:
        tensor = chat[internvl_chat_key(key)]
        index = _qkv_index(key)
        native[key] = tensor if index is None else tensor.chunk(3)[index]
    return native


def load_transformers_model(arch: str, path: Path):
    """A tiny checkpoint as a transformers model, float32, eval mode.

    InternVL chat checkpoints need remote code that is not available offline; they load into
    transformers' native InternVL model (the same architecture) with the weights renamed back.
    """
    import torch

    if arch != "internvl_chat":
        return _model_class(arch).from_pretrained(path, dtype=torch.float32).eval()
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    chat_config = json.loads((Path(path) / "config.json").read_text())
    config = internvl_native_config(chat_config, AutoTokenizer.from_pretrained(path))
    model = _model_class(arch)(config).to(torch.float32)
    weights = load_file(Path(path) / "model.safetensors")
    model.load_state_dict(internvl_from_chat_layout(weights, list(model.state_dict())), strict=True)
    return model.eval()


def _build_processor(spec: dict[str, Any], tokenizer):
    arch = spec["arch"]
    if arch in ("llava", "llava_next"):
        vision = spec["vision"]
        side = vision["image_size"]
        image_kwargs = dict(
            size={"shortest_edge": side},
            crop_size={"height": side, "width": side},
            do_center_crop=True,
        )
        common = dict(
            tokenizer=tokenizer,
            patch_size=vision["patch_size"],
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS token, dropped by "default"
            image_token="<image>",
            chat_template=_LLAVA_CHAT_TEMPLATE,
        )
        if arch == "llava":
            from transformers import CLIPImageProcessor, LlavaProcessor

            return LlavaProcessor(image_processor=CLIPImageProcessor(**image_kwargs), **common)
        from transformers import LlavaNextImageProcessor, LlavaNextProcessor

        image_processor = LlavaNextImageProcessor(
            **image_kwargs, image_grid_pinpoints=spec["image_grid_pinpoints"]
        )
        return LlavaNextProcessor(image_processor=image_processor, **common)

    if arch == "internvl_chat":
        return None  # vLLM builds InternVL's processor from config.json
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    vision = spec["vision"]
    size = {"shortest_edge": spec["min_pixels"], "longest_edge": spec["max_pixels"]}
    patch = dict(
        patch_size=vision["patch_size"],
        temporal_patch_size=vision["temporal_patch_size"],
        merge_size=vision["spatial_merge_size"],
    )
    if arch in QWEN3_FAMILIES:
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=dict(size), **patch),
            video_processor=Qwen3VLVideoProcessor(size=dict(size), **patch),
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
        )
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=dict(size), **patch),
        # cap_pixels_per_frame=True: the qwen-vl-utils behavior (default from transformers 5.22);
        # stating it silences a warning on every load.
        video_processor=Qwen2VLVideoProcessor(size=dict(size), cap_pixels_per_frame=True, **patch),
        tokenizer=tokenizer,
        chat_template=_QWEN_CHAT_TEMPLATE,
    )


def _model_class(arch: str):
    import transformers

    return getattr(
        transformers,
        {
            "llava": "LlavaForConditionalGeneration",
            "llava_next": "LlavaNextForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
            "qwen3_vl": "Qwen3VLForConditionalGeneration",
            "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
            "internvl_chat": "InternVLForConditionalGeneration",
        }[arch],
    )


def _is_norm(name: str) -> bool:
    leaf = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else name
    return "norm" in leaf or "layrnorm" in leaf or leaf == "ln_q"


def _init_weights(model, spec: dict[str, Any], suppressed_ids: list[int]) -> None:
    """Deterministic init that gives confident, input-dependent greedy decoding."""
    import torch

    gen = torch.Generator().manual_seed(spec["seed"])
    hidden = spec["text"]["hidden_size"]
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if param.ndim == 1:
                if name.endswith("bias"):
                    param.normal_(0.0, 0.02, generator=gen)
                elif _is_norm(name) or name.endswith((".lambda_1", ".lambda_2")):
                    param.fill_(1.0)  # norms and InternViT's layer scale
                else:  # CLIP class_embedding, LLaVA-NeXT image_newline
                    param.normal_(0.0, 1.0, generator=gen)
            elif name.endswith("lm_head.weight"):
                param.normal_(0.0, spec["logit_std"] / math.sqrt(hidden), generator=gen)
                param[suppressed_ids] = 0.0
            elif "embed_tokens" in name:
                param.normal_(0.0, 1.0, generator=gen)
            elif "position_embedding" in name:
                param.normal_(0.0, 0.5, generator=gen)
            else:  # linear / conv kernels: unit-variance outputs for unit-variance inputs
                # MoE experts are stacked (experts, out, in) kernels.
                fan_in = param.shape[-1] if ".experts." in name else math.prod(param.shape[1:])
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)


def suppressed_token_ids(tokenizer) -> list[int]:
    """Ids whose LM-head rows are zero: special tokens and tokens that decode unprintably.

    Zero rows give a logit of exactly 0 while the top logit is several units above, so greedy
    decoding never picks them: no EOS (outputs always run to max_tokens), no image
    placeholders, and no control characters or partial UTF-8 bytes in generated text.
    """
    ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if not text or "\ufffd" in text or not text.isprintable():
            ids.add(i)
    return sorted(ids)


def _write_checkpoint(spec: dict[str, Any], out_dir: Path) -> None:
    import torch

    tokenizer = build_tokenizer(spec["arch"])
    config = _build_config(spec, tokenizer)
    processor = _build_processor(spec, tokenizer)

    torch.manual_seed(spec["seed"])
    model = _model_class(spec["arch"])(config).to(torch.float32).eval()
    _init_weights(model, spec, suppressed_token_ids(tokenizer))
    gen_config = model.generation_config
    gen_config.do_sample = False
    if spec["arch"] in QWEN_FAMILIES or spec["arch"] == "internvl_chat":
        gen_config.eos_token_id = [
            tokenizer.convert_tokens_to_ids("<|im_end|>"),
            tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        ]
    if spec["arch"] == "internvl_chat":
        _write_internvl_chat(spec, tokenizer, model, out_dir)
    else:
        model.save_pretrained(out_dir, max_shard_size="20GB")
        _to_hub_layout(out_dir, spec["arch"])
        processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _write_internvl_chat(spec: dict[str, Any], tokenizer, model, out_dir: Path) -> None:
    """config.json, its config module, weights in the chat layout and the generation config."""
    from safetensors.torch import save_file

    config = _internvl_chat_config(spec, tokenizer)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / f"{INTERNVL_CONFIG_MODULE}.py").write_text(_INTERNVL_CONFIG_SOURCE)
    weights = {k: v.contiguous() for k, v in internvl_to_chat_layout(model.state_dict()).items()}
    save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})
    model.generation_config.save_pretrained(out_dir)


def _to_hub_layout(out_dir: Path, arch: str) -> None:
    """Rewrite saved weights in the layout of the hub's checkpoints, where it differs.

    - llava, llava_next: transformers 5.x's CLIPVisionModel has no `vision_model.` level (its
      load-time conversion mapping strips that prefix), and `save_pretrained` of
      Llava/LlavaNext does not add it back: it writes `vision_tower.embeddings...` instead of
      the hub's `vision_tower.vision_model...`. vLLM's CLIPVisionModel needs the
      `vision_model.` level, and transformers loads either form.
    - qwen3_vl_moe: the hub stores each layer's experts as (experts, in, out), transformers as
      (experts, out, in), and `save_pretrained` keeps its own; vLLM reads the hub's (transformers
      reads both, telling them apart by shape).
    """
    if arch not in ("llava", "llava_next", "qwen3_vl_moe"):
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = out_dir / "model.safetensors"
    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if arch == "qwen3_vl_moe":
        save_file(
            {
                k: v.transpose(1, 2).contiguous() if k.endswith("_proj") and ".experts." in k else v
                for k, v in tensors.items()
            },
            path,
            metadata=metadata,
        )
        return
    renamed = {
        re.sub(r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model.", k): v
        for k, v in tensors.items()
    }
    if renamed.keys() != tensors.keys():
        save_file(renamed, path, metadata=metadata)


def _marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_complete(out_dir: Path, spec: dict[str, Any]) -> bool:
    marker = _marker(out_dir)
    return (
        marker is not None
        and marker.get("spec_hash") == spec_hash(spec)
        and all((out_dir / f).is_file() for f in _REQUIRED_FILES)
    )


def build_tiny_model(arch: str, out_dir: Path, size: str = "tiny") -> Path:
    """Write (or reuse) a random-weight checkpoint for `arch` in `out_dir`; return the path.

    Returns at once when `out_dir` already holds a complete build of the same spec. Otherwise
    the build goes to a temporary sibling directory that is renamed into place (under a lock
    file next to `out_dir`, so concurrent builders wait for each other and readers never see
    a half-written checkpoint). An existing `out_dir` is replaced only when it holds an older
    build (our marker file) or is empty.
    """
    import fcntl

    out_dir = Path(out_dir).absolute()
    spec = model_spec(arch, size)
    if is_complete(out_dir, spec):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(out_dir, spec):  # another process built it while we waited
            return out_dir
        if out_dir.exists() and any(out_dir.iterdir()) and _marker(out_dir) is None:
            raise FileExistsError(f"{out_dir} is not empty and has no {MARKER_FILE}; not touched")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
        try:
            _write_checkpoint(spec, tmp)
            marker = {"spec_hash": spec_hash(spec), "spec": spec}
            (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it 0700
            for f in tmp.iterdir():
                f.chmod(0o644)
            if out_dir.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
                os.replace(out_dir, old / "checkpoint")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", required=True, choices=ARCHES)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", default="tiny", choices=SIZES)
    args = parser.parse_args(argv)
    print(build_tiny_model(args.arch, args.out, args.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
