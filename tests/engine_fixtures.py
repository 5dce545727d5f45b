"""Session fixtures for real vLLM engines (imported by conftest.py).

Engines are the slow part of the suite (a minute or more each on 2 cores, compiled or not: two
new processes import vLLM), so they are shared. The engine matrix, one ILP engine per family
and attention backend, serves both the PLC and the ILP engine tests: the session-scoped
`matrix_case` parameter makes pytest run every test of one engine together, across modules,
so each starts once. `vllm_serve` starts one `vllm serve` subprocess for its tests. Each is
shut down after its last test.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from crop_vllm.options import CropSettings
from crop_vllm.serve import serve_command
from crop_vllm.testing.servers import free_port, start_server, stop_server, wait_until_healthy
from tests.engine_starts import engine_start, release_after_last_use
from tests.engine_support import CROP_ARCH, make_llm, shutdown

#: The CROP settings of the session's serving engines (`vllm serve` here, the gateways'
#: embedded one): ILP allowed, so one engine serves every mode; a gateway may allow less.
SERVING_SETTINGS = CropSettings(enable_ilp=True)
#: Their KV block size: vLLM's CPU default (128 tokens) would round the KV that ILP frees on
#: these short prompts away; 32 is the smallest the CPU attention backend takes.
SERVING_BLOCK_SIZE = 32

MATRIX_ARCHES = ("llava", "qwen2_5_vl", "llava_next", "qwen3_vl", "qwen3_vl_moe", "internvl_chat")
#: Backend -> the worker extension its engines load (FLEX needs the CPU adaptations).
BACKENDS = {
    "CPU_ATTN": "tests.ilp_probe.IlpProbe",
    "FLEX_ATTENTION": "tests.flex_on_cpu.FlexOnCpu",
}
#: (arch, backend) of every matrix engine. CPU_ATTN runs every family compiled, as vLLM runs
#: by default; these come first, and the PLC tests run on exactly them (`CPU_ATTN_MATRIX`).
#: FLEX_ATTENTION, whose metadata builder keeps persistent state, runs on LLaVA-NeXT, the
#: family whose row separators and one-cell regions give chunks that keep no token.
MATRIX = [*((arch, "CPU_ATTN") for arch in MATRIX_ARCHES), ("llava_next", "FLEX_ATTENTION")]
CPU_ATTN_MATRIX = MATRIX[: len(MATRIX_ARCHES)]
ILP_OVERRIDES = {"crop_enable_ilp": True}
#: Small chunks: every image's placeholders span several prefill steps.
CHUNK_TOKENS = 64


def matrix_id(case: tuple[str, str]) -> str:
    return "-".join(case)


def make_ilp_llm(checkpoint: Path, arch: str, backend: str = "CPU_ATTN", **engine_args):
    """An ILP engine on `checkpoint`, prefill forced into CHUNK_TOKENS-token chunks."""
    return make_llm(
        checkpoint,
        CROP_ARCH[arch],
        hf_overrides=ILP_OVERRIDES,
        enable_prefix_caching=False,
        enable_chunked_prefill=True,
        max_num_batched_tokens=CHUNK_TOKENS,
        attention_backend=backend,
        worker_extension_cls=BACKENDS[backend],
        **engine_args,
    )


@pytest.fixture(scope="session", params=MATRIX, ids=matrix_id)
def matrix_case(request) -> tuple[str, str]:
    return request.param


@pytest.fixture(scope="session")
def matrix_engine(matrix_case, tiny_checkpoint):
    """The matrix engine of the case: ILP enabled (so it serves PLC, ILP, off and text-only
    requests), prefill in CHUNK_TOKENS-token chunks, the stock-metadata invariant check of
    `tests/ilp_probe.py`. FLEX runs eagerly with a small KV cache (on CPU it materializes
    query x cached keys), in its own processes: its CPU adaptations patch vLLM where they are
    imported."""
    arch, backend = matrix_case
    extra = (
        {"num_gpu_blocks_override": 48, "enforce_eager": True}
        if backend == "FLEX_ATTENTION"
        else {}
    )
    llm = make_ilp_llm(tiny_checkpoint(arch), arch, backend, **extra)
    release_after_last_use("matrix_engine", lambda: shutdown(llm))
    yield llm
    shutdown(llm)


@dataclass
class Server:
    url: str
    model: str
    process: subprocess.Popen


@pytest.fixture(scope="session")
def vllm_serve(tiny_checkpoint, tmp_path_factory):
    """`vllm serve` with the CROP plugin on the tiny LLaVA (`SERVING_SETTINGS`)."""
    model = str(tiny_checkpoint("llava"))
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
    extra = [
        "--dtype", "float32",
        "--enforce-eager",  # starts faster; compiled CROP is tested on the plugin's engines
        "--max-model-len", "2048",
        "--max-num-seqs", "4",
        "--block-size", str(SERVING_BLOCK_SIZE),
        "--limit-mm-per-prompt", '{"image": 2}',
        "--enable-prompt-tokens-details",  # the gateway checks its image tokens per response
    ]  # fmt: skip
    command = serve_command(Path(model), "127.0.0.1", port, extra, SERVING_SETTINGS)
    url = f"http://127.0.0.1:{port}"
    with engine_start("vllm serve", compiled=False):
        process = start_server(command, log, env)
        wait_until_healthy(url, process, log, timeout=600)
    release_after_last_use("vllm_serve", lambda: stop_server(process))
    try:
        yield Server(url, model, process)
    finally:
        stop_server(process)
