"""An asyncio micro-batcher: concurrent requests share one detector forward pass.

Requests from all clients go into one bounded queue. A single runner task takes up to
`max_batch` items, waiting at most `max_wait_s` after the oldest one arrived, and hands them to a
synchronous `process` function on one worker thread, so the event loop never runs the model and
the model is never entered by two threads. A full queue rejects new work at once
(`LocalizerOverloaded`) instead of letting latency grow without bound. A caller that is cancelled
simply loses interest: its item is skipped if not yet started, its result dropped if it was.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from crop_localizer.errors import LocalizerClosed, LocalizerOverloaded
from crop_localizer.metrics import LocalizerMetrics

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class _Entry(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[ItemT, ResultT]):
    """Batches items across callers; `process(items)` must return one result per item, in order.

    Bound to the event loop of its first `run` call. Not thread-safe: call it from that loop.
    """

    def __init__(
        self,
        process: Callable[[list[ItemT]], Sequence[ResultT]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        metrics: LocalizerMetrics,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= 1, max_wait_s >= 0; "
                f"got {max_batch}, {max_queue}, {max_wait_s}"
            )
        self._process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._pending: deque[_Entry[ItemT, ResultT]] = deque()
        self._arrived = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crop-localizer")
        self._closed = False

    async def run(self, items: Sequence[ItemT]) -> list[ResultT]:
        """Queue all `items` (or none of them, when the queue lacks room) and await the results.

        Raises `LocalizerOverloaded` at once when the queue is full, and whatever `process`
        raised for a batch to every caller in it.
        """
        if self._closed:
            raise LocalizerClosed("the localizer is shut down")
        if not items:
            return []
        if len(self._pending) + len(items) > self.max_queue:
            self._metrics.overloaded.inc()
            raise LocalizerOverloaded(
                f"localizer queue is full ({len(self._pending)} of {self.max_queue} waiting, "
                f"{len(items)} more requested); retry later"
            )
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_batches())
        loop = asyncio.get_running_loop()
        entries = [_Entry(item, loop.create_future()) for item in items]
        self._pending.extend(entries)
        self._arrived.set()
        futures = [entry.future for entry in entries]
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:  # one failed or we were cancelled: the others are moot
                future.cancel()
            raise

    async def aclose(self) -> None:
        """Stop the runner; waiting callers get `LocalizerClosed`. The batcher cannot restart."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(LocalizerClosed("the localizer shut down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def queued(self) -> int:
        """Items waiting for a forward pass (those in the running batch excluded)."""
        return len(self._pending)

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            for entry in batch:
                self._metrics.queue_wait.observe(started - entry.enqueued)
            self._metrics.batch_size.observe(len(batch))
            try:
                results = await loop.run_in_executor(
                    self._executor, self._process_checked, [entry.item for entry in batch]
                )
            except Exception as exc:  # the batch failed: every caller in it learns why
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                continue
            finally:
                self._metrics.inference.observe(time.perf_counter() - started)
            for entry, result in zip(batch, results, strict=True):
                if not entry.future.done():  # a cancelled caller just drops its result
                    entry.future.set_result(result)

    def _process_checked(self, items: list[ItemT]) -> Sequence[ResultT]:
        results = self._process(items)
        if len(results) != len(items):
            raise RuntimeError(f"a batch of {len(items)} items returned {len(results)} results")
        return results

    async def _next_batch(self) -> list[_Entry[ItemT, ResultT]]:
        """Wait for work, then up to `max_wait_s` after the oldest item for the batch to fill."""
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            deadline = self._pending[0].enqueued + self.max_wait_s
            while len(self._pending) < self.max_batch:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._arrived.wait()
                except TimeoutError:
                    break
                self._drop_cancelled()
            self._drop_cancelled()
            if self._pending:
                count = min(self.max_batch, len(self._pending))
                return [self._pending.popleft() for _ in range(count)]

    def _drop_cancelled(self) -> None:
        if any(entry.future.done() for entry in self._pending):
            live = [entry for entry in self._pending if not entry.future.done()]
            self._pending.clear()
            self._pending.extend(live)
