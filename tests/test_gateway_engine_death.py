"""A gateway whose embedded engine dies (as an out-of-memory kill would) fails what is in flight
with 503, answers 503 to health checks and exits non-zero, so its orchestrator restarts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from crop_vllm.testing.servers import free_port, start_server, stop_server, wait_until_healthy
from tests.engine_starts import engine_start
from tests.gateway_fixtures import MODEL_NAME, chat_body

pytestmark = pytest.mark.engine

#: The longest the gateway may take to exit once its engine is gone.
EXIT_BOUND_S = 60


def engine_core(gateway: subprocess.Popen) -> psutil.Process:
    children = psutil.Process(gateway.pid).children(recursive=True)
    return next(c for c in children if "EngineCore" in " ".join([c.name(), *c.cmdline()]))


def test_when_the_engine_dies_requests_get_503_and_the_gateway_exits_non_zero(
    tiny_checkpoint, tmp_path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    command = [
        sys.executable, "-m", "server.cli", "serve",
        "--model", str(tiny_checkpoint("llava")), "--served-model-name", MODEL_NAME,
        "--port", str(port), "--log-level", "warning",
        "--engine-arg", "dtype=float32", "--engine-arg", "max_model_len=2048",
        "--engine-arg", "enforce_eager=true",  # nothing here depends on compilation
    ]  # fmt: skip
    gateway = start_server(command, log, {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        with engine_start("crop-server serve (to be killed)", compiled=False):
            wait_until_healthy(url, gateway, log, timeout=600)
        in_flight: list[httpx.Response] = []
        body = chat_body(max_tokens=1900, ignore_eos=True)
        reader = threading.Thread(
            target=lambda: in_flight.append(
                httpx.post(url + "/v1/chat/completions", json=body, timeout=EXIT_BOUND_S)
            )
        )
        reader.start()
        health = httpx.Client(base_url=url, timeout=10)
        while health.get("/health").json()["engine"].get("outstanding") != 1:
            assert reader.is_alive(), in_flight  # bounded: the request times out
            time.sleep(0.05)
        engine_core(gateway).send_signal(signal.SIGKILL)

        reader.join(EXIT_BOUND_S)
        assert in_flight[0].status_code == 503, in_flight[0].text
        assert in_flight[0].json()["error"]["code"] == "engine_unavailable"
        assert health.get("/health").status_code == 503
        assert gateway.wait(EXIT_BOUND_S) != 0
    finally:
        if gateway.poll() is None:
            stop_server(gateway)
