"""Session fixtures for real vLLM engines (imported by conftest.py).

Engines are the slow part of the suite (tens of seconds each on 2 cores), so they are shared:
`crop_engine(arch)` keeps one CROP engine alive at a time (tests are grouped by family, so each
starts once), and `vllm_serve` starts one `vllm serve` subprocess for the whole session.
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
from tests.engine_support import CROP_ARCH, make_llm, shutdown

#: The CROP settings of the session's serving engines (`vllm serve` here, the gateways'
#: embedded one): ILP allowed, so one engine serves every mode; a gateway may allow less.
SERVING_SETTINGS = CropSettings(enable_ilp=True)
#: Their KV block size: vLLM's CPU default (128 tokens) would round the KV that ILP frees on
#: these short prompts away; 32 is the smallest the CPU attention backend takes.
SERVING_BLOCK_SIZE = 32


@pytest.fixture(scope="session")
def crop_engine(tiny_checkpoint):
    slot: dict[str, object] = {}

    def get(arch: str | None):
        """The CROP engine for `arch`; `None` shuts the current one down (to start another)."""
        if arch is None:
            for engine in slot.values():
                shutdown(engine)
            slot.clear()
            return None
        if arch not in slot:
            for engine in slot.values():
                shutdown(engine)
            slot.clear()
            slot[arch] = make_llm(tiny_checkpoint(arch), CROP_ARCH[arch])
        return slot[arch]

    yield get
    for engine in slot.values():
        shutdown(engine)


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
    process = start_server(command, log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, log, timeout=600)
        yield Server(url, model, process)
    finally:
        stop_server(process)
