"""Run a generation while the client waits: keep-alive comments, progress, and cancellation
when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request

from pixelrouter.errors import ClientGone
from pixelrouter.sse import KEEPALIVE, progress_comment, sse_comment
from pixelrouter.types import ProgressEvent

T = TypeVar("T")


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (a queued job never runs).
    A client that left gets `ClientGone`, answered quietly, not a traceback in the log."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientGone("The client closed the connection.")
        return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


class Tick:
    """One thing to tell a streaming client while it waits."""

    def __init__(self, progress: ProgressEvent | None = None) -> None:
        self.progress = progress

    def comment(self) -> bytes:
        """A keep-alive comment, or the denoising progress as one."""
        if self.progress is None:
            return sse_comment(KEEPALIVE)
        return progress_comment(self.progress.step, self.progress.total_steps)


async def with_keepalive(
    start: Callable[[Callable[[ProgressEvent], None]], Awaitable[T]],
    interval_s: float,
) -> AsyncIterator[Tick | T]:
    """Yield `Tick`s (keep-alive every `interval_s`, and each progress event) until the
    generation ends, then its result. Its exception propagates. Closing the iterator early
    (the client went away) cancels the generation."""
    events: asyncio.Queue[ProgressEvent] = asyncio.Queue()
    task = asyncio.ensure_future(start(events.put_nowait))
    getter: asyncio.Task[ProgressEvent] | None = None
    try:
        while not task.done():
            getter = asyncio.create_task(events.get())
            done, _ = await asyncio.wait(
                {task, getter}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                yield Tick(getter.result())
                continue
            getter.cancel()
            if task not in done:
                yield Tick()
        while not events.empty():
            yield Tick(events.get_nowait())
        yield task.result()
    finally:
        if getter is not None and not getter.done():
            getter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
