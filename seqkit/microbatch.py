"""Micro-batching for a server: concurrent requests on one model gathered into one call.

A request carries a list of items (texts); :class:`MicroBatcher` waits until the oldest waiting
request is ``max_wait`` seconds old or ``max_batch`` items wait, runs the model once on all of
them in the model's own thread, and hands each request its own slice of the answer.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

__all__ = ["MicroBatcher", "QueueFull"]


class QueueFull(Exception):
    """More items wait for a model than ``max_queue`` allows."""


@dataclass
class _Request:
    items: list[Any]
    future: asyncio.Future
    arrived: float


class MicroBatcher:
    """Gather concurrent ``await submit(items)`` calls into one ``fn(all_items)`` call.

    Args:
        fn: a list of items in, a list of as many results out (``tagger.tag``). It runs in
            ``executor``; give each model an executor of one thread, so that one model never runs
            two calls at once.
        max_batch: items per call. A request is never split: one with more items runs alone,
            and ``max_batch=1`` runs every request alone (no micro-batching).
        max_wait: seconds the oldest waiting request may wait for others to join it (0: none;
            a batch is then what gathered while the previous call ran).
        max_queue: items that may wait at once (0: no limit); past it ``submit`` raises
            :class:`QueueFull`.
        on_batch: called as ``on_batch(requests, items)`` after each call of ``fn``.
        on_depth: called with the number of waiting requests whenever it changes.

    A call that raises fails only the request at fault: a batch of several requests that raises
    is run again one request at a time. A request whose caller went away (cancelled) is dropped.
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], executor: Optional[Executor], *, max_batch: int = 32,
                 max_wait: float = 0.0, max_queue: int = 0,
                 on_batch: Optional[Callable[[int, int], None]] = None,
                 on_depth: Optional[Callable[[int], None]] = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn, self.executor = fn, executor
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.on_batch, self.on_depth = on_batch, on_depth
        self._pending: collections.deque[_Request] = collections.deque()
        self._waiting = 0  # items in _pending
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """The results of ``fn`` for ``items``, computed together with other waiting requests."""
        if self.max_queue and self._pending and self._waiting + len(items) > self.max_queue:
            raise QueueFull(f"{self._waiting} texts already wait for this model (at most {self.max_queue})")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._serve())
        assert self._wake is not None
        request = _Request(list(items), loop.create_future(), loop.time())
        self._pending.append(request)
        self._waiting += len(request.items)
        self._depth()
        self._wake.set()
        return await request.future

    async def close(self) -> None:
        """Stop gathering; requests still waiting are cancelled."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            self._pending.popleft().future.cancel()
        self._waiting = 0

    def _depth(self) -> None:
        if self.on_depth is not None:
            self.on_depth(len(self._pending))

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._pending[0].arrived + self.max_wait
            while self._waiting < self.max_batch and (left := deadline - loop.time()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            group = self._take()
            if group:
                await self._run(group)

    def _take(self) -> list[_Request]:
        """The oldest waiting requests, up to ``max_batch`` items (at least one request)."""
        group: list[_Request] = []
        count = 0
        while self._pending:
            request = self._pending[0]
            if not request.future.done() and group and count + len(request.items) > self.max_batch:
                break
            self._pending.popleft()
            self._waiting -= len(request.items)
            if request.future.done():  # its caller went away
                continue
            group.append(request)
            count += len(request.items)
        self._depth()
        return group

    async def _run(self, group: list[_Request]) -> None:
        items = [item for request in group for item in request.items]
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, items)
            if len(results) != len(items):
                raise RuntimeError(f"{self.fn!r} returned {len(results)} results for {len(items)} items")
        except Exception as exc:
            if len(group) > 1:  # find the request at fault; the others still get their answers
                for request in group:
                    await self._run([request])
                return
            if not group[0].future.done():
                group[0].future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(group), len(items))
        start = 0
        for request in group:
            if not request.future.done():
                request.future.set_result(list(results[start: start + len(request.items)]))
            start += len(request.items)
