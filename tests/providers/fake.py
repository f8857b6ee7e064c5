"""A tiny HTTP/1.1 server on 127.0.0.1 for provider tests: real sockets, scripted answers, and
the faults a real network has (silence, stalls, truncation, resets)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

from PIL import Image

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many"}


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query).items()}

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
        """Multipart fields and files (field name, filename, bytes)."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self.body)
        fields: dict[str, str] = {}
        files: list[tuple[str, str, bytes]] = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            if part.get_filename():
                files.append((str(name), str(part.get_filename()), payload))
            else:
                fields[str(name)] = payload.decode()
        return fields, files


@dataclass
class Reply:
    status: int = 200
    body: Any = b""  # bytes, or JSON-able
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Raw:
    """Write these bytes as they are, then close, stall or reset the connection."""

    data: bytes
    then: Literal["close", "stall", "reset"] = "close"


class Stall:
    """Read the request and never answer."""


class Reset:
    """Reset the connection (RST) instead of answering."""


Action = Reply | Raw | Stall | Reset
Handler = Callable[[Seen], Action | Awaitable[Action]]


class FakeUpstream:
    """`async with FakeUpstream(handler) as fake:` serves on `fake.base` until the block ends."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self._stop = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        # Let every connection handler finish here, not be cancelled when the loop closes.
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while not self._stop.is_set():
                seen = await _read_request(reader)
                if seen is None:
                    return
                self.seen.append(seen)
                action = self.handler(seen)
                if inspect.isawaitable(action):
                    action = await action
                if isinstance(action, Reply):
                    writer.write(_encode_reply(action))
                    await writer.drain()
                    continue
                if isinstance(action, Stall):
                    await self._stop.wait()
                    return
                if isinstance(action, Reset):
                    _reset(writer)
                    return
                writer.write(action.data)
                await writer.drain()
                if action.then == "stall":
                    await self._stop.wait()
                elif action.then == "reset":
                    _reset(writer)
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(chunks)
    return Seen(method, target, headers, body)


def _encode_reply(reply: Reply) -> bytes:
    headers = dict(reply.headers)
    body = reply.body
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    headers["Content-Length"] = str(len(body))
    head = f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ------------------------------------------------------------------------------ images


def image_bytes(width: int, height: int, fmt: str = "PNG", color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def truncated_json_reply() -> Raw:
    """Headers promising 5000 bytes, 20 sent, then the connection closes."""
    return Raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        b'{"data": [{"b64_json"'
    )


def headers_then_stall() -> Raw:
    return Raw(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{",
        then="stall",
    )
