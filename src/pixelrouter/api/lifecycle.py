"""Graceful shutdown: the drain between a stop signal and uvicorn's own shutdown.

uvicorn, on SIGTERM, closes its listening socket at once, so a load balancer asking `/ready`
would only ever see a refused connection. `pixelrouter serve` runs `DrainingServer` instead: the
first SIGTERM (or SIGINT) starts a drain while the socket stays open. Draining, `/ready` answers
503, a new generation request gets 503 with `Retry-After` (so a gateway in front sends it
elsewhere), every other request still works, and the generations in flight get up to
`drain_timeout_s` to finish. Those still running then are cancelled the way a client that goes
away cancels its own (the engine drops the job; the service records it `cancelled` and
releases its reservation) and their clients get a 503, or an error event mid-stream. Then
uvicorn shuts down as usual and the app's lifespan closes the service, providers and store.
A second signal cuts the wait short; a third exits at once (what is left open is released by
the sweeper of the next process on the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import orjson
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelrouter.errors import ServiceUnavailable

from . import render
from .errors import error_response
from .routes.images import stream_error

log = logging.getLogger("pixelrouter.lifecycle")

DEFAULT_DRAIN_TIMEOUT_S = 30.0
# After the bound: how long cancelled generations get to record themselves `cancelled` and
# release their reservations before the app's shutdown goes on without them.
CANCEL_GRACE_S = 15.0
# What a client whose generation was cancelled by a shutdown is told to wait before retrying.
RETRY_AFTER_CANCELLED_S = 1

CHAT_PATH = "/api/v1/chat/completions"
OPENAI_IMAGE_PATHS = frozenset({"/api/v1/images/generations", "/api/v1/images/edits"})
GENERATION_PATHS = frozenset({CHAT_PATH, "/api/v1/images", *OPENAI_IMAGE_PATHS})


def generation_path(scope: Scope) -> str | None:
    """The generation endpoint a request is for (the only requests a drain refuses), or None."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path = str(scope.get("path", "")).rstrip("/")
    return path if path in GENERATION_PATHS else None


@dataclass
class Flight:
    """One generation request inside the app, and what its client has been sent so far."""

    path: str
    generation_id: str
    started: bool = False  # the response's headers went out
    finished: bool = False  # its last body message went out
    event_stream: bool = False
    chat_model: str | None = None  # from the first chunk of a chat stream
    chat_created: int | None = None
    cut: bool = False  # cancelled by the drain

    def watch(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                self.event_stream = any(
                    name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                    for name, value in message.get("headers", [])
                )
            elif message["type"] == "http.response.body":
                if self.event_stream and self.path == CHAT_PATH and self.chat_model is None:
                    self._remember_chat_chunk(message.get("body", b""))
                if not message.get("more_body", False):
                    self.finished = True
            await send(message)

        return watched

    def _remember_chat_chunk(self, body: bytes) -> None:
        for line in body.splitlines():
            if line.startswith(b"data: {"):
                with contextlib.suppress(ValueError):
                    chunk = orjson.loads(line[len(b"data: ") :])
                    self.chat_model = chunk.get("model")
                    self.chat_created = chunk.get("created")
                return

    async def answer_cut(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Tell the client its generation was cancelled by the shutdown: a 503 if nothing was
        sent yet, else the stream's own error event and its end."""
        error = ServiceUnavailable(
            "This server shut down before the generation finished: it was cancelled and "
            "nothing was charged. Retry it.",
            metadata={"reason": "shutdown", "retry_after": RETRY_AFTER_CANCELLED_S},
            headers={"Retry-After": str(RETRY_AFTER_CANCELLED_S)},
        )
        with contextlib.suppress(Exception):  # the client may be gone as well
            if not self.started:
                await error_response(error)(scope, receive, send)
            elif not self.finished:
                if self.event_stream:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": self._stream_error(error),
                            "more_body": True,
                        }
                    )
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _stream_error(self, error: ServiceUnavailable) -> bytes:
        if self.path == CHAT_PATH:
            chunk = render.chat_chunk(
                self.generation_id,
                self.chat_model or "",
                self.chat_created or int(time.time()),
                delta={},
                finish_reason="error",
                error=error,
            )
            return render.sse_data(chunk) + render.sse_data("[DONE]")
        event = stream_error(error)
        prefix = b"event: error\n" if self.path in OPENAI_IMAGE_PATHS else b""
        return prefix + render.sse_data(event) + render.sse_data("[DONE]")


@dataclass
class DrainReport:
    """What a drain did: generations that finished in time, and those it cancelled."""

    finished: int = 0
    cancelled: int = 0
    unrecorded: list[str] = field(default_factory=list)  # cancelled, still pending after grace
    seconds: float = 0.0


class Lifecycle:
    """Whether this process takes new generations, and the generation requests in flight."""

    def __init__(
        self,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
        *,
        record_finished: Callable[[str], bool] | None = None,
    ) -> None:
        self.drain_timeout_s = drain_timeout_s
        # Whether a generation's record is final (not pending); runs in a worker thread.
        self.record_finished = record_finished
        self.draining = False
        self._deadline: float | None = None  # monotonic end of the drain's wait
        self._flights: dict[asyncio.Task[None], Flight] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = asyncio.Event()
        self._drain: asyncio.Task[DrainReport] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: until this process is gone (at least 1)."""
        if self._deadline is None:
            return 1
        return max(1, math.ceil(self._deadline - time.monotonic()))

    def cut_short(self) -> None:
        """Stop waiting: cancel what is in flight now (a second stop signal)."""
        self._cut.set()

    async def drain(self, timeout_s: float | None = None) -> DrainReport:
        """Refuse new generations, give those in flight up to `timeout_s` (default
        `drain_timeout_s`) to finish, then cancel the rest. Calling it again awaits the same
        drain."""
        if self._drain is None:
            self._drain = asyncio.create_task(self._run_drain(timeout_s))
        return await asyncio.shield(self._drain)

    async def _run_drain(self, timeout_s: float | None) -> DrainReport:
        began = time.monotonic()
        bound = self.drain_timeout_s if timeout_s is None else timeout_s
        self.draining = True
        self._deadline = began + bound
        before = self.in_flight
        if before:
            log.warning(
                "draining: %d generation(s) in flight get up to %.0fs to finish; "
                "new generations get 503",
                before,
                bound,
            )
        idle = asyncio.ensure_future(self._idle.wait())
        cut = asyncio.ensure_future(self._cut.wait())
        try:
            await asyncio.wait({idle, cut}, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            cut.cancel()
        report = DrainReport()
        leftover = dict(self._flights)
        report.finished = max(0, before - len(leftover))
        if leftover:
            why = "a second stop signal" if self._cut.is_set() else f"the {bound:.0f}s bound"
            log.warning("drain: %s cancels %d generation(s) still running", why, len(leftover))
            for task, flight in leftover.items():
                flight.cut = True
                task.cancel()
            await asyncio.wait(leftover, timeout=CANCEL_GRACE_S)
            report.cancelled = len(leftover)
            report.unrecorded = await self._wait_recorded(
                [flight.generation_id for flight in leftover.values()]
            )
            if report.unrecorded:
                log.error(
                    "drain: %d cancelled generation(s) not recorded within %.0fs; the sweeper "
                    "of the next start releases them: %s",
                    len(report.unrecorded),
                    CANCEL_GRACE_S,
                    ", ".join(report.unrecorded),
                )
        report.seconds = time.monotonic() - began
        if before or leftover:
            log.warning(
                "drained in %.1fs: %d finished, %d cancelled",
                report.seconds,
                report.finished,
                report.cancelled,
            )
        return report

    async def _wait_recorded(self, generation_ids: list[str]) -> list[str]:
        """Wait (bounded) until the cancelled generations' records are final: their
        bookkeeping runs shielded and may outlive the request that started it."""
        check = self.record_finished
        if check is None or not generation_ids:
            return []
        pending = list(generation_ids)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while pending:
            try:
                pending = [gid for gid in pending if not await asyncio.to_thread(check, gid)]
            except Exception:
                log.exception("drain: could not read the cancelled generations' records")
                return pending
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        return pending

    # The middleware's side.

    def _enter(self, task: asyncio.Task[None], flight: Flight) -> None:
        self._flights[task] = flight
        self._idle.clear()

    def _leave(self, task: asyncio.Task[None]) -> None:
        self._flights.pop(task, None)
        if not self._flights:
            self._idle.set()


class DrainMiddleware:
    """Counts generation requests in flight; while draining, refuses new ones with 503."""

    def __init__(self, app: ASGIApp, *, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = generation_path(scope)
        if path is None:
            await self.app(scope, receive, send)
            return
        lifecycle = self.lifecycle
        if lifecycle.draining:
            retry = lifecycle.retry_after_s()
            refusal = error_response(
                ServiceUnavailable(
                    "This server is shutting down: it finishes the generations in flight and "
                    "takes no new ones. Retry on another server, or after Retry-After seconds.",
                    metadata={"reason": "draining", "retry_after": retry},
                    headers={"Retry-After": str(retry), "Connection": "close"},
                )
            )
            await refusal(scope, receive, send)
            return
        generation_id = str(scope.get("state", {}).get("generation_id", ""))
        flight = Flight(path, generation_id)
        task = asyncio.ensure_future(self.app(scope, receive, flight.watch(send)))
        lifecycle._enter(task, flight)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not flight.cut or (current is not None and current.cancelling()):
                raise  # not the drain's doing: the server itself is cancelling this request
            await flight.answer_cut(scope, receive, send)
        finally:
            lifecycle._leave(task)


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its shutdown (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self._stop_signals = 0
        self._drain: asyncio.Task[DrainReport] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only flags here; `on_tick` (10 times a second) acts on them.
        self._stop_signals += 1
        if self._stop_signals == 1:
            # Re-raised once the server is down, as uvicorn does (the exit status says why).
            self._captured_signals.append(sig)
        elif self._stop_signals >= 3:
            self.should_exit = True
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._stop_signals and self._drain is None:
            name = signal.Signals(self._captured_signals[0]).name if self._captured_signals else ""
            log.warning("%s: draining before shutdown (a second signal cuts it short)", name)
            self._drain = asyncio.create_task(self.lifecycle.drain())
        if self._stop_signals >= 2:
            self.lifecycle.cut_short()
        if self._drain is not None and self._drain.done():
            self.should_exit = True
        return await super().on_tick(counter)


def serve(app: Any, lifecycle: Lifecycle, **config: Any) -> None:
    """Run `app` under uvicorn with a drain before shutdown; `config` goes to `uvicorn.Config`.
    After the drain, uvicorn waits at most `timeout_graceful_shutdown` (default 10 s) for
    responses still being written."""
    config.setdefault("timeout_graceful_shutdown", 10)
    DrainingServer(uvicorn.Config(app, **config), lifecycle).run()
