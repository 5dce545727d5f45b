"""Session fixtures for real vLLM engines (imported by conftest.py).

Engines are the slow part of the suite (tens of seconds each on 2 cores), so they are shared:
`crop_engine(arch)` keeps one CROP engine alive at a time (tests are grouped by family, so each
starts once), and `vllm_serve` starts one `vllm serve` subprocess for the whole session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.engine_support import CROP_ARCH, make_llm, shutdown


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    model: str
    process: subprocess.Popen


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise TimeoutError(f"server not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def vllm_serve(tiny_checkpoint, tmp_path_factory):
    """`vllm serve` with the CROP plugin on the tiny LLaVA, via `python -m crop_vllm.demo`."""
    model = str(tiny_checkpoint("llava"))
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [sys.executable, "-m", "crop_vllm.demo", "--model", model, "--port", str(port)]
    command += [
        "--dtype",
        "float32",
        "--max-num-seqs",
        "4",
        "--limit-mm-per-prompt",
        '{"image": 2}',
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, log, timeout=600)
        yield Server(url, model, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
