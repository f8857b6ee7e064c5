"""What the end-to-end tests share: the running server's coordinates, HTTP clients that check
pixelrouter's headers on every response, and a transport that keeps the bytes an SDK read."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

MODEL = "black-forest-labs/flux.2-klein-4b"
DEMO_HEADER = "random-weights"


def cli_command() -> list[str]:
    """The installed `pixelrouter` script beside this interpreter, else `python -m`."""
    script = Path(sys.executable).parent / "pixelrouter"
    if script.exists():
        return [str(script)]
    found = shutil.which("pixelrouter")
    return [found] if found else [sys.executable, "-m", "pixelrouter.cli"]


def cli_env(data_dir: Path, admin_key: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # tiny models on a 2-core machine: one thread is fastest
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PIXELROUTER_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("PIXELROUTER_DATABASE_URL", "PIXELROUTER_API_KEY", "PIXELROUTER_ADMIN_KEY"):
        env.pop(name, None)
    if admin_key:
        env["PIXELROUTER_ADMIN_KEY"] = admin_key
    return env


@dataclass
class Server:
    """One real `pixelrouter serve --demo` process."""

    url: str  # http://127.0.0.1:PORT
    admin_key: str  # management key (PIXELROUTER_ADMIN_KEY)
    key: str  # an inference key created through POST /api/v1/keys
    log_path: Path
    cli: list[str]  # how to run the `pixelrouter` command

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def image_size(data: bytes, fmt: str = "PNG") -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == fmt, image.format
    return image.size


def b64_size(b64: str) -> tuple[int, int]:
    return image_size(base64.b64decode(b64))


def data_url_size(url: str) -> tuple[int, int]:
    header, _, payload = url.partition(",")
    assert header == "data:image/png;base64", header[:40]
    return b64_size(payload)


def reference_png(width: int = 320, height: int = 320) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def check_pixelrouter_headers(response: httpx.Response) -> None:
    """Every response of every endpoint carries a generation id and, in demo mode, says so."""
    generation_id = response.headers.get("x-generation-id", "")
    assert generation_id.startswith("gen-"), (response.request.url, dict(response.headers))
    assert response.headers.get("x-pixelrouter-demo") == DEMO_HEADER, response.request.url


@dataclass
class Seen:
    """The responses a checked client received (status, generation id), in order."""

    responses: list[tuple[int, str]] = field(default_factory=list)

    def hook(self, response: httpx.Response) -> None:
        check_pixelrouter_headers(response)
        self.responses.append((response.status_code, response.headers["x-generation-id"]))


class _Tee(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sink: bytearray) -> None:
        self.inner = inner
        self.sink = sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sink.extend(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class RecordingTransport(httpx.HTTPTransport):
    """Keeps a copy of every response body as it is read, so a test can see what went over the
    wire even where an SDK's models drop a field."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytearray] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        sink = bytearray()
        self.bodies.append(sink)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, sink),
            extensions=response.extensions,
        )


def checked_client(seen: Seen, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    return httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(120, connect=10),
        event_hooks={"response": [seen.hook]},
    )


def sse_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if line]


def sse_payloads(body: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded; `[DONE]` kept as the string."""
    out: list[Any] = []
    for line in sse_lines(body):
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def poll(what: str, check: Callable[[], Any], deadline_s: float = 30.0) -> Any:
    """Call `check` until it returns something truthy, or fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what}: not true within {deadline_s}s (last: {last!r})")
