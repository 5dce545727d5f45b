"""Fixtures for the gateway tests: one embedded vLLM engine per session, live gateways on
loopback ports, and a local image server.

The engine and every gateway run on one asyncio loop in a background thread (AsyncLLM's output
handler belongs to the loop that first uses it), so several gateways with different settings
can share the one engine while the tests drive them over real HTTP from the main thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest
import uvicorn
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from crop_vllm.testing.photos import noise, picture
from crop_vllm.testing.servers import free_port
from server.accounting import ModelGeometry
from server.app import build_engine, create_app
from server.config import CropDefaults, GatewayConfig, Limits
from server.engines import Engine
from server.engines.embedded import EmbeddedEngine
from server.images import ImageLimits, parse_networks
from tests.engine_fixtures import SERVING_BLOCK_SIZE, SERVING_SETTINGS
from tests.engine_starts import engine_start, release_after_last_use

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")

T = TypeVar("T")
MODEL_NAME = "tiny-llava"
API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
QUARTER = [0.0, 0.0, 0.5, 0.5]
#: The size of `picture`'s images.
IMAGE_SIZE = (224, 160)
MAX_IMAGE_BYTES = 200_000
MAX_IMAGE_PIXELS = 600 * 600
ENGINE_ARGS = {
    "dtype": "float32",
    "enforce_eager": True,  # starts faster; compiled CROP is tested on the plugin's engines
    "max_model_len": 2048,
    "max_num_seqs": 8,
    "block_size": SERVING_BLOCK_SIZE,
    "seed": 0,
}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def image_message(urls: list[str], question: str = "What is in the top left corner?") -> dict:
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    content.append({"type": "text", "text": question})
    return {"role": "user", "content": content}


def chat_body(*messages: dict, **fields: Any) -> dict[str, Any]:
    """A chat request body for the test gateways (a short text question by default)."""
    chat = list(messages) or [{"role": "user", "content": "Tell me everything."}]
    return {"model": MODEL_NAME, "messages": chat, **fields}


def ask(live: LiveGateway, messages: list[dict], **kwargs: Any) -> Any:
    """A chat completion through the official openai client (greedy, 4 tokens by default);
    `crop=` becomes the `crop` field."""
    client = openai.OpenAI(base_url=live.api, api_key=API_KEY, max_retries=0, timeout=120)
    kwargs.setdefault("max_tokens", 4)
    kwargs.setdefault("temperature", 0)
    crop = kwargs.pop("crop", None)
    extra = kwargs.pop("extra_body", None) or {}
    if crop is not None:
        extra["crop"] = crop
    return client.chat.completions.create(
        model=MODEL_NAME, messages=messages, extra_body=extra or None, **kwargs
    )


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds (a bound, not a claim
    about speed: pass generous ones)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.05)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(live: LiveGateway) -> Samples:
    """A gateway's `/metrics`, read with prometheus_client's own parser, once no counted request
    is in flight: the gateway counts a request after its response has gone out, so a scrape
    sent the moment a reply arrives could otherwise miss it."""
    samples: Samples = {}

    def settled() -> bool:
        nonlocal samples
        response = httpx.get(live.url + "/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }
        return not any(v for (name, _), v in samples.items() if name == "crop_requests_in_flight")

    wait_for(settled, 60)
    return samples


class Delta:
    """How much each sample moved between two scrapes."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.after.get(key, 0.0) - self.before.get(key, 0.0)


def generated_by_vllm(samples: Samples) -> float:
    """Tokens vLLM generated so far (its `vllm:generation_tokens_total`)."""
    return sum(
        value for (name, _), value in samples.items() if name == "vllm:generation_tokens_total"
    )


def completed_in_vllm(samples: Samples) -> float:
    """Requests vLLM completed: stopped, or ran to their length (`vllm:request_success_total`
    with those finish reasons; an aborted request is not one)."""
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "vllm:request_success_total"
        and dict(labels).get("finished_reason") in ("stop", "length")
    )


@dataclass(frozen=True)
class TinyTokens:
    """Visual tokens of one `IMAGE_SIZE` image of the tiny LLaVA, by the plugin's own layout
    functions: unpruned, and after PLC and ILP on the `QUARTER` region (default settings)."""

    full: int
    quarter_plc: int
    quarter_ilp: int


@pytest.fixture(scope="session")
def tiny_tokens(gateway_model) -> TinyTokens:
    from transformers import AutoConfig, AutoImageProcessor

    from crop_vllm.geometry import image_grids, num_image_tokens
    from crop_vllm.ilp.plan import image_keep_mask
    from crop_vllm.layout import CropMode, PLCSettings, Region
    from crop_vllm.options import ImagePlan

    width, height = IMAGE_SIZE
    grids = image_grids(
        AutoConfig.from_pretrained(gateway_model),
        AutoImageProcessor.from_pretrained(gateway_model).to_dict(),
        height,
        width,
    )
    region, plc = Region(*QUARTER), PLCSettings()
    return TinyTokens(
        full=num_image_tokens(grids, None, plc),
        quarter_plc=num_image_tokens(grids, region, plc),
        quarter_ilp=sum(image_keep_mask(grids, ImagePlan(CropMode.ILP, region), plc)),
    )


# --------------------------------------------------------------------------------------------
# The loop that hosts the engine and the gateways
# --------------------------------------------------------------------------------------------


@dataclass
class LiveGateway:
    url: str
    server: uvicorn.Server
    done: Any  # concurrent.futures.Future of server.serve()

    @property
    def api(self) -> str:
        return self.url + "/v1"


class ServerLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: Any, timeout: float = 120) -> LiveGateway:
        port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=30
        )
        server = uvicorn.Server(config)
        done = asyncio.run_coroutine_threadsafe(server.serve(), self.loop)
        deadline = time.monotonic() + timeout
        while not server.started:
            if done.done():
                done.result()  # raises the startup error, if any
                raise RuntimeError("the gateway stopped during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway did not start")
            time.sleep(0.05)
        return LiveGateway(f"http://127.0.0.1:{port}", server, done)

    def stop(self, gateway: LiveGateway, timeout: float = 60) -> None:
        gateway.server.should_exit = True
        gateway.done.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def server_loop() -> Iterator[ServerLoop]:
    loop = ServerLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def gateway_model(tiny_checkpoint) -> str:
    return str(tiny_checkpoint("llava"))


@pytest.fixture(scope="session")
def embedded_engine(server_loop, gateway_model) -> Iterator[EmbeddedEngine]:
    """The session's one in-process vLLM engine: the tiny LLaVA under its CROP architecture
    with `SERVING_SETTINGS`, built as `crop-server` builds it."""
    config = gateway_config(
        gateway_model, engine_args=ENGINE_ARGS, crop=CropDefaults(SERVING_SETTINGS)
    )
    geometry = ModelGeometry.load(config.model, config.crop.settings)
    engine = build_engine(config, geometry)
    assert isinstance(engine, EmbeddedEngine)
    with engine_start("gateway's embedded engine", compiled=False):
        server_loop.run(engine.start())
    release_after_last_use("embedded_engine", lambda: server_loop.run(engine.aclose()))
    yield engine
    server_loop.run(engine.aclose())


def gateway_config(model: str, **changes: Any) -> GatewayConfig:
    """The test gateways' settings: API key, two images at most, images only from 127.0.0.1."""
    base = GatewayConfig(
        model=model,
        served_model_name=MODEL_NAME,
        limits=Limits(max_images=2, max_body_bytes=2_000_000, max_tokens=2000),
        images=ImageLimits(
            max_bytes=MAX_IMAGE_BYTES,
            max_pixels=MAX_IMAGE_PIXELS,
            timeout_s=2.0,
            max_redirects=2,
            allowed_networks=parse_networks(["127.0.0.1/32"]),
            allow_public=False,
        ),
        api_keys=(API_KEY,),
    )
    return replace(base, **changes)


@pytest.fixture(scope="session")
def start_gateway(server_loop, gateway_model, embedded_engine) -> Iterator[Callable[..., Any]]:
    """`start_gateway(engine=None, localizer=None, **config_changes) -> LiveGateway`, stopped
    at the end of the session (or earlier with `server_loop.stop`)."""
    started: list[LiveGateway] = []

    def start(engine: Engine | None = None, localizer: Any = None, **changes: Any) -> LiveGateway:
        config = gateway_config(gateway_model, **changes)
        app = create_app(config, engine=engine or embedded_engine, localizer=localizer)
        live = server_loop.serve(app)
        started.append(live)
        return live

    yield start
    for live in started:
        if not live.done.done():
            server_loop.stop(live)


@pytest.fixture(scope="session")
def start_remote_gateway(server_loop, vllm_serve) -> Iterator[Callable[..., LiveGateway]]:
    """`start_remote_gateway(backend_urls, **config_changes) -> LiveGateway`: the remote engine
    in front of these backends (probed every 0.3 s) with `vllm_serve`'s CROP settings, stopped
    at the end of the session."""
    started: list[LiveGateway] = []

    def start(urls: list[str], **changes: Any) -> LiveGateway:
        changes.setdefault("remote_retry_interval_s", 0.3)
        changes.setdefault("crop", CropDefaults(SERVING_SETTINGS))
        config = gateway_config(vllm_serve.model, engine="remote", remote_urls=tuple(urls))
        started.append(server_loop.serve(create_app(replace(config, **changes))))
        return started[-1]

    yield start
    for live in started:
        if not live.done.done():
            server_loop.stop(live)


@pytest.fixture(scope="session")
def remote_gateway(start_remote_gateway, vllm_serve) -> LiveGateway:
    """A gateway whose one backend is the session's `vllm serve`."""
    return start_remote_gateway([vllm_serve.url])


@pytest.fixture(scope="session")
def gateway(start_gateway) -> LiveGateway:
    """The main gateway: embedded engine, default CROP settings, localizer `none`."""
    return start_gateway()


@pytest.fixture(scope="session")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.api, api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(gateway) -> Iterator[httpx.Client]:
    """Raw HTTP to the main gateway, authenticated."""
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as session:
        yield session


# --------------------------------------------------------------------------------------------
# A local image server (the only address the test gateways may fetch from)
# --------------------------------------------------------------------------------------------


@dataclass
class ImageServer:
    url: str
    images: dict[str, Image.Image]


class _ImageHandler(BaseHTTPRequestHandler):
    images: ClassVar[dict[str, bytes]] = {}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        name = parts.path.strip("/")
        if name in self.images:
            self._send(200, self.images[name], "image/png")
        elif name == "unsized":  # an oversized body without Content-Length
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"\x89PNG" + b"\0" * (MAX_IMAGE_BYTES + 1000))
        elif name == "page":
            self._send(200, b"<html>not an image</html>", "text/html")
        elif name == "corrupt":
            self._send(200, b"\x89PNG\r\n\x1a\n garbage", "image/png")
        elif name == "missing":
            self._send(404, b"nope", "text/plain")
        elif name == "redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif name == "slow":
            time.sleep(4)
            self._send(200, self.images.get("small", b""), "image/png")
        else:
            self._send(404, b"", "text/plain")


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    images = {
        "small": picture(1),
        "big": noise(0, 300, 300),  # a PNG larger than MAX_IMAGE_BYTES
        "huge": Image.new("RGB", (700, 700), (10, 20, 30)),  # more pixels than allowed
    }

    class Handler(_ImageHandler):
        pass

    Handler.images = {f"{name}.png": png_bytes(image) for name, image in images.items()}
    assert len(Handler.images["big.png"]) > MAX_IMAGE_BYTES
    assert len(Handler.images["huge.png"]) < MAX_IMAGE_BYTES
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ImageServer(f"http://127.0.0.1:{server.server_address[1]}", images)
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------------------------
# A TCP forwarder, to put a switchable (and countable) hop in front of a real backend
# --------------------------------------------------------------------------------------------


class TcpForwarder:
    """Forwards connections on its own loopback port to `target_port`; closed until `open()`.

    `requests` lists the first line of the HTTP requests sent through it (keep-alive
    included), so a test sees which backend a call went through.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.requests: list[str] = []
        #: The next request starting with these bytes has its connection closed unanswered.
        self.drop_next: bytes | None = None
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record and data.startswith((b"GET /", b"POST /")):  # a request's first line
                    self.requests.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                    if self.drop_next and data.startswith(self.drop_next):
                        self.drop_next = None  # closed unanswered, as an idle keep-alive one
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
