"""Helpers for tests that run real vLLM engines on the tiny checkpoints (CPU)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from crop_vllm.families import FAMILIES, family_of_architecture
from crop_vllm.layout import Region
from crop_vllm.testing.tiny_models import chat_prompt as make_prompt

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STOCK_ARCH = {f.model_type: f.stock_architecture for f in FAMILIES}
CROP_ARCH = {f.model_type: f.crop_architecture for f in FAMILIES}

MAX_TOKENS = 16
#: float32 on CPU: vLLM's kernels and transformers' differ only in summation order.
LOGPROB_TOLERANCE = 2e-3
QUARTER = Region(0.0, 0.0, 0.5, 0.5)
BORDER = Region(0.8, 0.0, 1.0, 0.3)
ONE_CELL = Region(0.41, 0.41, 0.42, 0.42)


def make_llm(checkpoint: Path, architecture: str, **overrides):
    """A real vLLM engine on CPU, float32, compiled as vLLM does by default, small enough for
    CI (`enforce_eager=True` in `overrides` for an eager one)."""
    from vllm import LLM

    hf_overrides = {"architectures": [architecture], **overrides.pop("hf_overrides", {})}
    settings = {
        "dtype": "float32",
        "max_model_len": 2048,
        "max_num_seqs": 8,
        "limit_mm_per_prompt": {"image": 2},
        "seed": 0,
        "trust_remote_code": family_of_architecture(architecture).remote_code,
    }
    return LLM(model=str(checkpoint), hf_overrides=hf_overrides, **{**settings, **overrides})


def shutdown(llm) -> None:
    llm.llm_engine.engine_core.shutdown()


def greedy(llm, requests: list[dict], logprobs: bool = True):
    """Greedy outputs for a batch of prompt dicts, in order."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logprobs=1 if logprobs else None)
    return llm.generate(requests, params, use_tqdm=False)


def request(arch: str, images: list[Image.Image], question: str, **crop) -> dict:
    prompt = {
        "prompt": make_prompt(arch, len(images), question),
        "multi_modal_data": {"image": images if len(images) > 1 else images[0]},
    }
    if crop:
        prompt["mm_processor_kwargs"] = crop
    return prompt


def assert_pruning_changes_the_answer(pruned, unpruned) -> None:
    """The reference with pruning differs from the reference without it by far more than the
    tolerance, so comparing the engine with the pruned reference can fail (tiny random models
    may well ignore the image)."""
    worst = max(abs(a - b) for a, b in zip(pruned.logprobs, unpruned.logprobs, strict=True))
    assert pruned.token_ids != unpruned.token_ids or worst > 10 * LOGPROB_TOLERANCE, worst


def chosen_logprobs(output) -> list[float]:
    completion = output.outputs[0]
    return [
        step[token].logprob
        for step, token in zip(completion.logprobs, completion.token_ids, strict=True)
    ]


def assert_matches(output, expected, label: object = None) -> None:
    """An engine output has the reference's greedy tokens and log-probs (within tolerance)."""
    assert list(output.outputs[0].token_ids) == expected.token_ids, label
    worst = max(abs(a - b) for a, b in zip(chosen_logprobs(output), expected.logprobs, strict=True))
    assert worst < LOGPROB_TOLERANCE, (label, worst)
