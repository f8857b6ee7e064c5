"""ASGI middleware: a generation id and demo header on every response, the body limit, and
the last line of defence for bugs.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and disconnect detection work.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelrouter.errors import InternalError, PayloadTooLarge, PixelrouterError

log = logging.getLogger("pixelrouter.api")
_ALPHABET = string.ascii_letters + string.digits


def new_generation_id() -> str:
    """`gen-<unix seconds>-<20 random letters and digits>`, as OpenRouter's ids look."""
    return f"gen-{int(time.time())}-" + "".join(secrets.choice(_ALPHABET) for _ in range(20))


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        demo: bool,
        on_answered: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.demo = demo
        # Told each generation id whose response has been sent whole (or given up on).
        self.on_answered = on_answered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        generation_id = new_generation_id()
        scope.setdefault("state", {})["generation_id"] = generation_id
        extra_headers = [(b"x-generation-id", generation_id.encode())]
        if self.demo:
            extra_headers.append((b"x-pixelrouter-demo", b"random-weights"))
        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + extra_headers
            await send(message)

        too_large = PayloadTooLarge(f"The request body is larger than {self.max_body_bytes} bytes.")
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _send_error(send_with_headers, too_large)
            return
        if declared is None and _may_have_body(scope):
            # A chunked body: read it here, within the limit, so an oversized one is a 413
            # before the app parses anything.
            body = await _read_limited(receive, self.max_body_bytes)
            if body is None:
                await _send_error(send_with_headers, too_large)
                return
            receive = _replay(body, receive)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # A bug: the client gets the SPEC envelope with an error id (and the generation
            # id header), never a traceback; the log gets both ids and the traceback.
            if started:
                raise
            error_id = secrets.token_hex(8)
            log.error(
                "internal error %s (generation %s) on %s %s",
                error_id,
                generation_id,
                scope.get("method"),
                scope.get("path"),
                exc_info=exc,
            )
            await _send_error(
                send_with_headers,
                InternalError(
                    f"Internal server error (error id {error_id}). It has been logged.",
                    metadata={"error_id": error_id},
                ),
            )
        finally:
            if self.on_answered is not None:
                self.on_answered(generation_id)


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
        name == b"transfer-encoding" for name, _ in scope.get("headers", [])
    )


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
    if error.status == 413:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
