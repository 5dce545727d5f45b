"""Helpers for tests that run real vLLM engines on the tiny checkpoints (CPU)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from crop_vllm.families import FAMILIES, family_of_architecture
from crop_vllm.layout import Region
from crop_vllm.testing.tiny_models import chat_prompt as make_prompt
from tests.engine_starts import engine_start

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


def make_llm(checkpoint: Path, architecture: str, in_process: bool = False, **overrides):
    """A real vLLM engine on CPU, float32, compiled as vLLM does by default, small enough for
    CI (`enforce_eager=True` in `overrides` for an eager one).

    `in_process=True`: the engine core and its worker run in this process, so that a test can
    read the scheduler and the worker directly, and an eager engine starts in seconds instead
    of a minute (no two new processes that each import vLLM). Compiled engines stay in their
    own processes, as vLLM runs them.
    """
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
    compiled = not overrides.get("enforce_eager", False)
    with (
        engine_start(f"LLM {architecture}", compiled, in_process),
        _multiprocessing(not in_process),
    ):
        return LLM(model=str(checkpoint), hf_overrides=hf_overrides, **{**settings, **overrides})


@contextmanager
def _multiprocessing(enabled: bool) -> Iterator[None]:
    """vLLM reads VLLM_ENABLE_V1_MULTIPROCESSING when it builds an engine, and only then."""
    if enabled:
        yield
        return
    import vllm.envs

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield
    vllm.envs.disable_envs_cache()  # the in-process engine core turned the cache on


def shutdown(llm) -> None:
    """Shut `llm`'s engine down; a second call does nothing (session engines are released
    after their last test, and their fixture's teardown runs again at the end)."""
    if not getattr(llm, "_crop_tests_shut_down", False):
        llm._crop_tests_shut_down = True
        llm.llm_engine.engine_core.shutdown()


def processed(checkpoint: Path, architecture: str, prompt: dict, **hf_overrides):
    """What vLLM's multimodal processor for `architecture` makes of a prompt dict (its
    `mm_processor_kwargs` included), without an engine: token ids, items and placeholders."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    import crop_vllm

    crop_vllm.register()  # as vLLM's plugin loader does in an engine (idempotent)
    config = ModelConfig(
        model=str(checkpoint),
        hf_overrides={"architectures": [architecture], **hf_overrides},
        dtype="float32",
        limit_mm_per_prompt={"image": 2},
        trust_remote_code=family_of_architecture(architecture).remote_code,
    )
    processor = MULTIMODAL_REGISTRY.create_processor(config)
    items = processor.info.parse_mm_data(prompt["multi_modal_data"])
    return processor(
        prompt["prompt"], items, hf_processor_mm_kwargs=prompt.get("mm_processor_kwargs")
    )


def stock_prompt_token_ids(arch: str, checkpoint: Path, prompt: dict) -> list[int]:
    """The prompt tokens stock vLLM's own processor (the family's stock architecture, without
    CROP's processor or an engine) makes of a prompt dict."""
    plain = {key: value for key, value in prompt.items() if key != "mm_processor_kwargs"}
    return list(processed(checkpoint, STOCK_ARCH[arch], plain)["prompt_token_ids"])


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
