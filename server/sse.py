"""Reading OpenAI chat streams (server-sent events): the one parser of `data:` lines, used by the
engines to read vLLM's streams and by the load tests to read the gateway's.

Each event of a chat stream is one `data: {json}` line, and `data: [DONE]` ends the stream;
other lines (blank separators, `:` comments) carry nothing. An error mid-stream arrives as an
event whose object has an `error` key: it is passed on, for the reader to raise its own error.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

_DONE = object()


def _payload(line: str | bytes) -> Any:
    """The JSON object of a `data:` line, `_DONE` at the end, None for other lines."""
    text = line.decode() if isinstance(line, bytes) else line
    if not text.startswith("data:"):
        return None
    data = text[5:].strip()
    return _DONE if data == "[DONE]" else json.loads(data)


def chunks(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """The events' objects of a stream's lines, up to `data: [DONE]`."""
    for line in lines:
        payload = _payload(line)
        if payload is _DONE:
            return
        if payload is not None:
            yield payload


async def achunks(lines: AsyncIterable[str]) -> AsyncIterator[dict[str, Any]]:
    """`chunks` of an asynchronous stream of lines."""
    async for line in lines:
        payload = _payload(line)
        if payload is _DONE:
            return
        if payload is not None:
            yield payload
