"""Stopping work for a client that went away, streamed or not (a 499 in the metrics).

A plain request runs under `until_disconnect`, which cancels it when the client's disconnect
message arrives; a stream is an `EventStream`, which listens for that message while it sends.
Either way the engine's iterator is closed, which aborts the request in vLLM (embedded) or
closes the backend connection (remote, and vLLM aborts it there).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from server.errors import APIError
from server.request_state import RequestState

T = TypeVar("T")


class EventStream(StreamingResponse):
    """Server-sent events that stop the generation as soon as the client goes away.

    Starlette's own check for a vanished client happens only at its next write (and, under ASGI
    spec versions before 2.4, not at all); this listens for the disconnect message instead.
    """

    def __init__(self, content: AsyncIterator[str], state: RequestState) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = False
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    nonlocal completed
                    with contextlib.suppress(OSError):
                        await self.stream_response(send)
                        completed = True
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                # The server also reports a disconnect once the response is complete.
                self._state.client_gone = not completed
                group.cancel_scope.cancel()
        finally:
            await aclose(self.body_iterator)  # type: ignore[arg-type]


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it when the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    RequestState.of(request.scope).client_gone = True
    raise APIError(499, "the client closed the request", code="client_closed_request")


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator (or any iterator with `aclose`), running its cleanup now."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
