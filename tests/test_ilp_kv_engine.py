"""ILP's KV saving in real engines: at equal KV bytes more ILP requests run at once, outputs stay
the reference's through preemption and recompute, the scheduler and the worker drop the same
positions, and an under-allocation stops the engine instead of writing foreign KV.

The engines run eagerly in this process (`make_llm(in_process=True)`), so that a test reads the
scheduler (running requests, blocks per KV-cache group, its drop plans) and the worker (its drop
plans) directly; the parity and prefix-caching tests share one LLaVA engine. Admission compares
two engines on the tiny LLaVA (4 layers, K = 2) with the same KV bytes and 32-token blocks: the
stock layout (`crop_ilp_compact_kv=false`, N blocks of 4 layers) and the compacted one (2N
blocks of 2 layers: layers < K and >= K in separate groups).
"""

from __future__ import annotations

import math

import pytest

from crop_vllm.geometry import llava_grids
from crop_vllm.ilp.plan import image_keep_mask
from crop_vllm.layout import CropMode
from crop_vllm.options import CropSettings, ImagePlan
from crop_vllm.testing.photos import picture
from tests.engine_fixtures import CHUNK_TOKENS
from tests.engine_support import (
    BORDER,
    CROP_ARCH,
    ONE_CELL,
    QUARTER,
    assert_matches,
    make_llm,
    make_prompt,
    request,
    shutdown,
)
from tests.reference_ilp import ReferenceILP

pytestmark = pytest.mark.engine

BLOCK = 32
#: Stock-layout blocks (one holds all 4 layers); the compacted layout gets twice as many.
STOCK_BLOCKS = 16
REQUESTS = 6
MAX_TOKENS = 16


def make_engine(checkpoint, arch: str = "llava", compact_kv: bool = True, **engine_args):
    return make_llm(
        checkpoint,
        CROP_ARCH[arch],
        in_process=True,
        hf_overrides={"crop_enable_ilp": True, "crop_ilp_compact_kv": compact_kv},
        disable_log_stats=False,
        enforce_eager=True,  # allocation does not depend on compilation; eager starts faster
        **{"block_size": BLOCK, "enable_prefix_caching": False, **engine_args},
    )


def core(llm):
    return llm.llm_engine.engine_core.engine_core


def model_runner(llm):
    return core(llm).model_executor.driver_worker.worker.model_runner


def run(llm, requests: list[dict], max_tokens: int = MAX_TOKENS, on_step=None) -> list:
    """Greedy outputs in request order, calling `on_step(llm)` after every engine step."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, logprobs=1)
    engine = llm.llm_engine
    for index, prompt in enumerate(requests):
        engine.add_request(str(index), prompt, params)
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
        if on_step is not None:
            on_step(llm)
    return [finished[str(index)] for index in range(len(requests))]


@pytest.fixture(scope="module")
def images():
    return [picture(0), picture(1, 196, 224)]


@pytest.fixture(scope="module")
def workload(images):
    """Six requests, each two images of which ILP keeps one cell."""
    return [
        request(
            "llava",
            images,
            f"What is on the left side? ({index})",
            crop_mode="ilp",
            crop_regions=[ONE_CELL.as_list()] * 2,
        )
        for index in range(REQUESTS)
    ]


def dropped_tokens(checkpoint) -> int:
    from transformers import AutoConfig

    (grid,) = llava_grids(AutoConfig.from_pretrained(checkpoint))
    mask = image_keep_mask([grid], ImagePlan(CropMode.ILP, ONE_CELL), CropSettings().plc)
    return 2 * (len(mask) - sum(mask))


def held(llm) -> dict[str, list[int]]:
    """KV blocks each running request holds, per KV-cache group."""
    scheduler = core(llm).scheduler
    manager = scheduler.kv_cache_manager
    return {
        request.request_id: [len(blocks) for blocks in manager.get_block_ids(request.request_id)]
        for request in scheduler.running
    }


@pytest.fixture(scope="module")
def runs(tiny_checkpoint, workload):
    """Per layout: outputs, (running requests, blocks per request and group) after each step,
    and preemptions."""
    checkpoint = tiny_checkpoint("llava")
    results = {}
    for compact_kv in (False, True):
        llm = make_engine(
            checkpoint,
            compact_kv=compact_kv,
            max_model_len=256,
            max_num_seqs=8,
            max_num_batched_tokens=2048,
            num_gpu_blocks_override=STOCK_BLOCKS * (2 if compact_kv else 1),
        )
        steps: list[dict[str, list[int]]] = []
        try:
            outputs = run(llm, workload, on_step=lambda llm, steps=steps: steps.append(held(llm)))
            preemptions = sum(
                m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions"
            )
        finally:
            shutdown(llm)
        results[compact_kv] = (outputs, steps, preemptions)
    return results


def test_equal_kv_bytes_run_more_ilp_requests_at_once(runs, tiny_checkpoint):
    outputs, _, _ = runs[False]
    prompt = len(outputs[0].prompt_token_ids)
    kept = prompt - dropped_tokens(tiny_checkpoint("llava"))
    usable_stock, usable_compact = STOCK_BLOCKS - 1, 2 * STOCK_BLOCKS - 1  # block 0 is vLLM's
    stock_fit = usable_stock // math.ceil(prompt / BLOCK)
    compact_fit = usable_compact // (math.ceil(prompt / BLOCK) + math.ceil(kept / BLOCK))
    assert compact_fit > stock_fit
    assert max(len(step) for step in runs[False][1]) == stock_fit
    assert max(len(step) for step in runs[True][1]) == min(compact_fit, REQUESTS)


def test_compacted_groups_hold_blocks_for_kept_tokens_only(runs, tiny_checkpoint):
    for compact_kv, (outputs, steps, _) in runs.items():
        prompt = len(outputs[0].prompt_token_ids)
        kept = prompt - dropped_tokens(tiny_checkpoint("llava"))
        expected = [math.ceil(prompt / BLOCK)]
        if compact_kv:
            expected.append(math.ceil(kept / BLOCK))
        first = next(step for step in steps if step)
        assert all(blocks == expected for blocks in first.values()), (compact_kv, first)


def test_both_layouts_preempt_and_still_match_the_reference(runs, tiny_checkpoint, images):
    reference = ReferenceILP("llava", tiny_checkpoint("llava"), CropSettings(enable_ilp=True))
    plans = [ImagePlan(CropMode.ILP, ONE_CELL)] * 2
    expected_of: dict[tuple[int, ...], object] = {}
    for compact_kv, (outputs, _, preemptions) in runs.items():
        assert preemptions > 0, f"compact_kv={compact_kv} did not preempt: shrink the KV cache"
        for output in outputs:
            prompt = tuple(output.prompt_token_ids)
            if prompt not in expected_of:
                expected_of[prompt] = reference.generate_ilp(
                    list(prompt), images, plans, MAX_TOKENS
                )
            assert_matches(output, expected_of[prompt], compact_kv)


#: name -> (crop_mode, regions per image)
PARITY_CASES = {
    "quarter": ("ilp", [QUARTER]),
    "border": ("ilp", [BORDER]),
    "one-cell": ("ilp", [ONE_CELL]),
    "two-images": ("ilp", [QUARTER, BORDER]),
    "plc+ilp": ("plc+ilp", [BORDER]),
}


def test_an_under_allocation_stops_the_engine_instead_of_writing_wrong_kv(
    tiny_checkpoint, workload, monkeypatch
):
    """Force the scheduler to count one block too few kept tokens: the worker refuses (on an
    engine of its own: the refused step leaves it unusable)."""
    from crop_vllm.ilp.kv import IlpAttentionManager
    from crop_vllm.ilp.patches.runner import CompactedKvUnderAllocated

    counted = IlpAttentionManager._tokens

    def one_block_short(manager, request_id, num_tokens):
        tokens = counted(manager, request_id, num_tokens)
        return max(tokens - manager.block_size, 0) if manager.planner else tokens

    llm = make_engine(tiny_checkpoint("llava"), max_model_len=256)
    monkeypatch.setattr(IlpAttentionManager, "_tokens", one_block_short)
    try:
        with pytest.raises(CompactedKvUnderAllocated, match="drop plans disagree"):
            run(llm, workload[:1])
    finally:
        shutdown(llm)


@pytest.fixture(scope="module")
def shared_engine(tiny_checkpoint):
    """The tiny LLaVA with the KV saving and prefix caching on (ILP keeps it on with the
    saving), shared by the tests below that leave it serving. The tests above start and shut
    down their own engines first: two in-process engines never live at once."""
    llm = make_engine(tiny_checkpoint("llava"), max_model_len=2048, enable_prefix_caching=True)
    yield llm
    shutdown(llm)


@pytest.fixture
def engine_of(tiny_checkpoint, request):
    """`engine_of(arch)`: the shared engine for LLaVA (last: see `shared_engine`), a new one
    for another family, shut down after the test."""
    made = []

    def get(arch: str):
        if arch == "llava":
            return request.getfixturevalue("shared_engine")
        made.append(make_engine(tiny_checkpoint(arch), arch, max_model_len=2048))
        return made[-1]

    yield get
    for llm in made:
        shutdown(llm)


@pytest.mark.parametrize("arch", ["llava_next", "qwen2_5_vl", "llava"])
def test_scheduler_and_worker_drop_the_same_positions(arch, engine_of, images):
    """The scheduler sizes the compacted KV from the same drops the worker compacts with."""
    from crop_vllm.ilp.patches.runner import runner_state

    llm = engine_of(arch)
    requests = [
        request(
            arch, images[: len(regions)], f"Where? ({name})", crop_mode=mode,
            crop_regions=[r.as_list() for r in regions],
        )
        for name, (mode, regions) in PARITY_CASES.items()
    ]  # fmt: skip
    plans: dict[str, tuple[list[int], list[int]]] = {}

    def record(llm):
        scheduler, state = core(llm).scheduler, runner_state(model_runner(llm))
        for running in scheduler.running:
            req_id = running.request_id
            worker = state.drops_of(req_id)
            if worker is not None:
                plans[req_id] = (scheduler.crop_ilp_planner.drops(req_id).tolist(), worker)

    run(llm, requests, max_tokens=2, on_step=record)
    assert len(plans) == len(PARITY_CASES)
    for req_id, (scheduler_drops, worker_drops) in plans.items():
        assert scheduler_drops == worker_drops, req_id
        assert scheduler_drops, req_id


def test_prefix_caching_shares_only_what_the_stock_model_would_hold(
    tiny_checkpoint, shared_engine, images
):
    """With the KV saving, prefix caching stays on: requests reuse the KV of a shared text
    prefix before the image (the only compacted blocks that hold stock contents), never a
    compacted block after it, and every answer still equals the reference."""
    checkpoint = tiny_checkpoint("llava")
    preamble = " ".join(["You answer questions about pictures briefly and precisely."] * 8)
    region = [QUARTER.as_list()]

    def ask(question: str, **crop) -> dict:
        prompt = f"USER: {preamble} <image>\n{question} ASSISTANT:"
        request = {"prompt": prompt, "multi_modal_data": {"image": images[0]}}
        if crop:
            request["mm_processor_kwargs"] = crop
        return request

    cases = [
        ("ilp-a", ask("What is on the left?", crop_mode="ilp", crop_regions=region)),
        ("ilp-b", ask("And on the right?", crop_mode="ilp", crop_regions=region)),
        ("plain", ask("What is on the left?")),
        ("ilp-a-again", ask("What is on the left?", crop_mode="ilp", crop_regions=region)),
    ]
    outputs = {name: run(shared_engine, [request])[0] for name, request in cases}
    reference = ReferenceILP("llava", checkpoint, CropSettings(enable_ilp=True))
    image_start = list(outputs["ilp-a"].prompt_token_ids).index(reference.image_token_id)
    for name, output in outputs.items():
        plans = [None if name == "plain" else ImagePlan(CropMode.ILP, QUARTER)]
        expected = reference.generate_ilp(list(output.prompt_token_ids), images[:1], plans, 16)
        assert_matches(output, expected, name)
    for name in ("ilp-b", "plain", "ilp-a-again"):
        assert 0 < outputs[name].num_cached_tokens <= image_start, name


def test_preempted_ilp_requests_recompute_to_the_reference(tiny_checkpoint, images):
    """A KV cache of a few 128-token blocks (the CPU default size), prefill in 64-token chunks:
    four ILP requests that each outgrow one block preempt each other; after recompute every one
    still equals the uninterrupted reference. With the KV saving a block holds the layers of
    one of two groups, so 10 of them hold the bytes of 5 stock blocks."""
    arch = "llava"
    llm = make_engine(
        tiny_checkpoint(arch),
        block_size=128,
        num_gpu_blocks_override=10,
        max_model_len=512,
        enable_chunked_prefill=True,
        max_num_batched_tokens=CHUNK_TOKENS,
    )
    pictures = [*images, picture(2, 224, 224)]
    try:
        tokenizer = llm.get_tokenizer()
        image_tokens = 64  # the tiny LLaVA's 8x8 grid; "<image>" is one token of the prompt
        words = []
        # Prompts of about 120 tokens: one 128-token block each, a second one while decoding.
        while len(tokenizer.encode(make_prompt(arch, 1, " ".join(words)))) + image_tokens < 121:
            words.append("left")
        regions = [QUARTER, BORDER, ONE_CELL, QUARTER]
        requests = [
            request(
                arch,
                [pictures[i % 3]],
                " ".join(words),
                crop_mode="ilp",
                crop_regions=[region.as_list()],
            )
            for i, region in enumerate(regions)
        ]
        outputs = run(llm, requests)
        preemptions = sum(
            metric.value for metric in llm.get_metrics() if metric.name == "vllm:num_preemptions"
        )
    finally:
        shutdown(llm)
    assert preemptions > 0, "the test did not preempt: shrink the KV cache"
    reference = ReferenceILP(arch, tiny_checkpoint(arch), CropSettings(enable_ilp=True))
    for index, (output, region) in enumerate(zip(outputs, regions, strict=True)):
        assert len(output.prompt_token_ids) <= 128 < len(output.prompt_token_ids) + MAX_TOKENS
        plans = [ImagePlan(CropMode.ILP, region)]
        expected = reference.generate_ilp(
            list(output.prompt_token_ids), [pictures[index % 3]], plans, MAX_TOKENS
        )
        assert_matches(output, expected, index)
