"""ASGI middleware: a generation id and demo header on every response, the body limit, and
the last line of defence for bugs.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and disconnect detection work.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelrouter.errors import (
    InvalidRequest,
    PayloadTooLarge,
    PixelrouterError,
    RequestTimeout,
)

from .errors import unexpected_error
from .handoff import Handoff, watch_connection, yield_to_disconnects

log = logging.getLogger("pixelrouter.api")
_ALPHABET = string.ascii_letters + string.digits


def new_generation_id() -> str:
    """`gen-<unix seconds>-<20 random letters and digits>`, as OpenRouter's ids look: one
    draw of 119 random bits (62^20 > 2^119) written in base 62, not 20 draws."""
    number = secrets.randbits(119)
    letters = []
    for _ in range(20):
        number, digit = divmod(number, 62)
        letters.append(_ALPHABET[digit])
    return f"gen-{int(time.time())}-" + "".join(letters)


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        demo: bool,
        on_answered: Callable[[str, int | None], None] | None = None,
        authenticate: Callable[[Scope], Awaitable[PixelrouterError | None]] | None = None,
        body_timeout_s: float = 30.0,
        ack_timeout_s: float = 90.0,
        uploads: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        # How long the end of a tracked answer waits for the client's acknowledgements.
        self.ack_timeout_s = ack_timeout_s
        # Checks a request's key from its headers before its body is read (None: no check).
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        # POST paths whose body the route reads as a stream (file uploads), each with its own
        # limit: counted as it arrives, never held here whole.
        self.uploads = dict(uploads or {})
        self.body_timeout_s = body_timeout_s
        self.demo = demo
        # Told, for each generation id, once its response is over: how many of its images were
        # handed to the client's connection whole (None: it registered none; `handoff.py`).
        self.on_answered = on_answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        generation_id = new_generation_id()
        handoff = Handoff()
        state = scope.setdefault("state", {})
        state["generation_id"] = generation_id
        state["handoff"] = handoff
        extra_headers = [(b"x-generation-id", generation_id.encode())]
        if self.demo:
            extra_headers.append((b"x-pixelrouter-demo", b"random-weights"))
        started = False
        connection = receive  # the server's own: its disconnect, whatever the app reads
        watcher: asyncio.Task[None] | None = None

        async def send_with_headers(message: Message) -> None:
            nonlocal started, watcher
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + extra_headers
                if handoff.tracked:
                    watcher = asyncio.ensure_future(watch_connection(connection, handoff))
            if message["type"] == "http.response.body" and handoff.tracked:
                await _send_counted(send, message, handoff, self.ack_timeout_s)
                return
            await send(message)

        if _has_nul(scope):
            await _send_error(
                send_with_headers,
                InvalidRequest("The URL must not contain NUL characters (%00)."),
            )
            return
        upload_limit = (
            self.uploads.get(scope.get("path", "")) if scope["method"] == "POST" else None
        )
        limit = self.max_body_bytes if upload_limit is None else upload_limit
        too_large = PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(send_with_headers, too_large)
            return
        if _may_have_body(scope) and self.authenticate is not None:
            try:
                refused = await self.authenticate(scope)
            except Exception as exc:  # the database out of reach: a 503, the body unread
                refused = unexpected_error(exc, f"authenticating {scope.get('path')}")
            if refused is not None:
                refused.headers.setdefault("Connection", "close")  # the body stays unread
                await _send_error(send_with_headers, refused)
                return
        if _may_have_body(scope) and upload_limit is not None:
            receive = _counted(receive, upload_limit, self.body_timeout_s)
        elif _may_have_body(scope):
            # Read the body here, within the size limit (a chunked one has no length to check
            # first) and the deadline (a client that trickles it, slow-loris, gets a 408 and
            # holds nothing longer), before the app parses anything.
            try:
                body = await _read_limited(
                    _with_deadline(receive, self.body_timeout_s), self.max_body_bytes
                )
            except RequestTimeout as exc:
                await _send_error(send_with_headers, exc)
                return
            if body is None:
                await _send_error(send_with_headers, too_large)
                return
            receive = _replay(body, receive)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # A bug (or the database out of reach): the client gets the SPEC envelope (with the
            # generation id header), never a traceback; the log gets both ids and the traceback.
            if started:
                raise
            where = f"generation {generation_id} on {scope.get('method')} {scope.get('path')}"
            await _send_error(send_with_headers, unexpected_error(exc, where))
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
            handoff.close()
            if self.on_answered is not None:
                self.on_answered(generation_id, handoff.delivered_images())


async def _send_counted(
    send: Send, message: Message, handoff: Handoff, ack_timeout_s: float
) -> None:
    """Pass a body message on and account for it (`handoff.py`). With a probe, a byte counts
    once the client acknowledged it; without one, once the server took the next message (its
    flow control waits for the earlier bytes first) with the connection open. The last message
    is followed by an empty one, and the response ends only once the client acknowledged
    everything (or left); the server's disconnect after the end means nothing."""
    if handoff.lost:
        return  # the client is gone: nothing more is handed over
    body = message.get("body", b"")
    last = not message.get("more_body", False)
    before = handoff.sent
    connection_before = handoff.handed()
    await send({**message, "more_body": True} if last else message)
    handoff.sent += len(body)
    handoff.mark(connection_before, len(body))
    await yield_to_disconnects()
    if handoff.probe is None:
        if handoff.lost:
            return
        handoff.confirmed = before
    else:
        handoff.observe()
    if last:
        if not handoff.lost:
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            await yield_to_disconnects()
        if handoff.probe is not None:
            received = await handoff.wait_acked(ack_timeout_s)
        else:
            received = not handoff.lost
        if received:
            handoff.confirmed = handoff.sent
            handoff.complete = True
        if not handoff.lost:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _has_nul(scope: Scope) -> bool:
    """A NUL in the path or the query: no identifier here holds one, and PostgreSQL could not
    even compare with it."""
    return "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _may_have_body(scope: Scope) -> bool:
    return scope.get("method") in ("POST", "PUT", "PATCH") and any(
        name in (b"transfer-encoding", b"content-length") for name, _ in scope.get("headers", [])
    )


def _with_deadline(receive: Receive, seconds: float) -> Receive:
    """`receive` for reading the body: each part must come before the body's deadline."""
    deadline = time.monotonic() + seconds

    async def receive_in_time() -> Message:
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await receive()
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {seconds:g} s: send it whole, "
                "without pauses."
            ) from None

    return receive_in_time


async def _read_limited(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _counted(receive: Receive, limit: int, idle_s: float) -> Receive:
    """`receive` for a body the route streams: a 413 once more than `limit` bytes came (the
    rest unread, the connection closed), a 408 when no part came for `idle_s` seconds."""
    total = 0
    done = False

    async def receive_counted() -> Message:
        nonlocal total, done
        if done:
            return await receive()  # after the body: the client's disconnect
        try:
            async with asyncio.timeout(idle_s):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(
                f"No part of the upload arrived for {idle_s:g} s.",
                headers={"Connection": "close"},
            ) from None
        done = message["type"] != "http.request" or not message.get("more_body", False)
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise PayloadTooLarge(
                    f"The request body is larger than {limit} bytes.",
                    headers={"Connection": "close"},
                )
        return message

    return receive_counted


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # afterwards: the client's disconnect

    return replay


async def _send_error(send: Any, error: PixelrouterError) -> None:
    body = orjson.dumps(error.envelope())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    extra = {name.lower(): value for name, value in error.headers.items()}
    if error.status in (408, 413):  # the rest of the body is not read
        extra["connection"] = "close"
    headers += [(name.encode(), value.encode()) for name, value in extra.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
