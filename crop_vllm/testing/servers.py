"""Local servers for tests and benchmarks, as subprocesses on loopback: a free port, starting one
with its output in a log, waiting until it answers, stopping it."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    command: list[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """`command` running, its stdout and stderr in `log`."""
    with log.open("w") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=None if env is None else dict(env)
        )


def wait_until_healthy(
    url: str, process: subprocess.Popen, log: Path, timeout: float, path: str = "/health"
) -> None:
    """Poll `url` + `path` until 200; on an early exit or timeout, fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"{url}: not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


def stop_server(process: subprocess.Popen, timeout: float = 60) -> None:
    """Ask the server to stop (SIGTERM: vLLM and uvicorn shut down cleanly), kill it if it
    has not within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
