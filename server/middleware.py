"""One pure-ASGI middleware for what every request needs: an id, a body-size limit, metrics.

Pure ASGI (not Starlette's BaseHTTPMiddleware) so streamed responses and client-disconnect
messages pass through untouched. The request id comes from the client's `X-Request-Id` when it
is sane, else a fresh one; it is echoed in the response header, used as the completion id and
written in every log line of the request (`RequestIdFilter`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, error_body
from server.metrics import GatewayMetrics
from server.request_state import RequestState

logger = logging.getLogger("server.access")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

#: Endpoints whose requests are counted in `crop_requests_total` (path -> endpoint label).
COUNTED = {"/v1/chat/completions": "chat", "/v1/crop/preview": "preview"}
CLIENT_GONE = 499  # nginx's "client closed request"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every log record (for formats with `%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        state = RequestState(request_id, started)
        state.attach(scope)
        endpoint = COUNTED.get(scope["path"])
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        if endpoint is not None:
            self.metrics.in_flight.labels(endpoint).inc()
        try:
            body = await self._read_body(receive, headers)
            if body is None:
                too_large = APIError(
                    413,
                    f"the request body exceeds {self.max_body_bytes} bytes",
                    code="request_too_large",
                )
                await _send_error(send_with_id, too_large)
            else:
                await self.app(scope, _replay(body, receive), send_with_id)
        finally:
            if state.client_gone:
                status = CLIENT_GONE
            elif state.stream_status is not None:  # a stream that failed after its 200 was sent
                status = state.stream_status
            elapsed = time.perf_counter() - started
            if endpoint is not None:
                self.metrics.in_flight.labels(endpoint).dec()
                self.metrics.requests.labels(endpoint, state.crop_mode, str(status)).inc()
                self.metrics.latency.labels(endpoint).observe(elapsed)
                overhead = state.overhead_seconds(elapsed)
                if overhead is not None:
                    self.metrics.gateway_overhead.observe(overhead)
            logger.info("%s %s -> %d in %.3fs", scope["method"], scope["path"], status, elapsed)
            request_id_var.reset(token)

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes | None:
        """The whole body, or None when it is larger than allowed (checked before reading when
        the client declares a length)."""
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the buffered body to the app once, then the real channel (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, error: APIError) -> None:
    payload: dict[str, Any] = error_body(error)
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
