"""ASGI middleware: a generation id and demo header on every response, and the body limit.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses and disconnect detection work.
"""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixelrouter.errors import PayloadTooLarge

_ALPHABET = string.ascii_letters + string.digits


def new_generation_id() -> str:
    """`gen-<unix seconds>-<20 random letters and digits>`, as OpenRouter's ids look."""
    return f"gen-{int(time.time())}-" + "".join(secrets.choice(_ALPHABET) for _ in range(20))


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, demo: bool) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.demo = demo

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        generation_id = new_generation_id()
        scope.setdefault("state", {})["generation_id"] = generation_id
        extra_headers = [(b"x-generation-id", generation_id.encode())]
        if self.demo:
            extra_headers.append((b"x-pixelrouter-demo", b"random-weights"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + extra_headers
            await send(message)

        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _reject_too_large(send_with_headers, self.max_body_bytes)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise PayloadTooLarge(_too_large_message(self.max_body_bytes))
            return message

        await self.app(scope, limited_receive, send_with_headers)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large_message(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


async def _reject_too_large(send: Any, limit: int) -> None:
    body = orjson.dumps(PayloadTooLarge(_too_large_message(limit)).envelope())
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
