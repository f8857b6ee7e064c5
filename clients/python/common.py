"""What the Python client programs share: the server's coordinates, image checks, request
capture and the one-JSON-line-per-call report.

Each program runs every call its client library can make against pixelrouter and prints

    {"client": "...", "version": "...", "call": "...", "ok": true|false, "detail": "..."}

per call; it exits 1 when any call failed. A failed call's detail carries the exact exception
text (for the SDKs' pydantic models, the validation path of the field that broke).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

import httpx
from PIL import Image

MODEL = "black-forest-labs/flux.2-klein-4b"
AUTHOR, SLUG = MODEL.split("/")
PROMPT = "a lighthouse at dusk"
TIERS = {"0.5K": 2**18, "1K": 2**20, "2K": 2**22}  # SPEC §2: pixels per tier


def env() -> tuple[str, str, str]:
    """PIXELROUTER_BASE_URL (http://127.0.0.1:PORT/api/v1), PIXELROUTER_API_KEY (inference
    key), PIXELROUTER_ADMIN_KEY (management key)."""
    names = ("PIXELROUTER_BASE_URL", "PIXELROUTER_API_KEY", "PIXELROUTER_ADMIN_KEY")
    missing = [name for name in names if not os.environ.get(name)]
    if missing:
        sys.exit(f"set {', '.join(missing)} (see clients/python/README.md)")
    return tuple(os.environ[name] for name in names)  # type: ignore[return-value]


def ratio_size(ratio: str = "1:1", tier: str = "1K") -> tuple[int, int]:
    """SPEC §2: `w = 16*floor(sqrt(A*a/b)/16)`, `h = 16*floor(sqrt(A*b/a)/16)`."""
    a, b = (float(part) for part in ratio.split(":"))
    area = TIERS[tier]
    return 16 * math.floor(math.sqrt(area * a / b) / 16), 16 * math.floor(
        math.sqrt(area * b / a) / 16
    )


def decode(data: str | bytes) -> Image.Image:
    """An image from raw bytes, base64 text or a `data:` URL."""
    if isinstance(data, str):
        if data.startswith("data:"):
            data = data.partition(",")[2]
        data = base64.b64decode(data)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def check_images(
    images: Iterable[str | bytes], expected: list[tuple[int, int]], fmt: str = "PNG"
) -> str:
    """Decode every image; their sizes must be `expected` (in order) and their format `fmt`."""
    decoded = [decode(image) for image in images]
    sizes = [image.size for image in decoded]
    formats = {image.format for image in decoded}
    check(sizes == expected, f"image sizes {fmt_sizes(sizes)}, asked for {fmt_sizes(expected)}")
    check(formats <= {fmt}, f"image formats {sorted(formats)}, expected {fmt}")
    return f"{len(sizes)} {fmt} image(s) {fmt_sizes(sizes)}"


def fmt_sizes(sizes: Iterable[tuple[int, int]]) -> str:
    return ",".join(f"{w}x{h}" for w, h in sizes) or "none"


def reference_png(width: int, height: int) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def check(condition: object, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def describe(exc: BaseException) -> str:
    """The exception's exact text, with the HTTP status and body an SDK error carries."""
    parts = [f"{type(exc).__name__}: {exc}"]
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    response = getattr(exc, "raw_response", None) or getattr(exc, "response", None)
    request = getattr(response, "request", None)
    if request is not None and not hasattr(exc, "llm_provider"):  # LiteLLM's request is a stub
        parts.append(f"request: {request.method} {request.url}")
    if status is not None:
        parts.append(f"status: {status}")
    if body and str(body) not in parts[0]:
        parts.append(f"body: {str(body)[:600]}")
    if not isinstance(exc, AssertionError) and not status:
        tb = traceback.extract_tb(exc.__traceback__)
        if tb:
            parts.append(f"at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}")
    return " | ".join(parts)[:4000]


class Matrix:
    """Runs calls, prints one JSON line per call, remembers whether any failed.

    `context`, when given, is called after each call and its text appended to the detail (the
    LiteLLM program uses it to print the request body LiteLLM sent)."""

    def __init__(
        self, client: str, package: str | None = None, context: Callable[[], str] | None = None
    ) -> None:
        self.client = client
        self.version = version(package or client)
        self.context = context
        self.failed: list[str] = []

    def case(self, call: str) -> Callable[[Callable[[], str | None]], Callable[[], str | None]]:
        """Decorator: runs the function at once as the call named `call`."""

        def run(fn: Callable[[], str | None]) -> Callable[[], str | None]:
            try:
                detail, ok = fn() or "", True
            except Exception as exc:  # noqa: BLE001 - every failure is reported, none stops the run
                detail, ok = describe(exc), False
                self.failed.append(call)
            if self.context is not None:
                detail = f"{detail}; {self.context()}"
            line = {
                "client": self.client,
                "version": self.version,
                "call": call,
                "ok": ok,
                "detail": detail,
            }
            print(json.dumps(line), flush=True)
            return fn

        return run

    def exit(self) -> None:
        sys.exit(1 if self.failed else 0)


class SentRequests:
    """Every request any `httpx.Client` in this process sends, as (method, url, JSON body or None,
    the response's X-Generation-Id). Shows what a client library really put on the wire (e.g.
    which provider keys survived its request models) and the generation id of responses that
    carry none in their body (the Image API's)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any, str | None]] = []
        original = httpx.Client.send

        def send(client: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
            try:
                body = json.loads(request.content) if request.content else None
            except (ValueError, httpx.RequestNotRead):
                body = "<non-JSON body>"
            response = original(client, request, **kwargs)
            generation_id = response.headers.get("x-generation-id")
            self.requests.append((request.method, str(request.url), body, generation_id))
            return response

        httpx.Client.send = send  # type: ignore[method-assign]

    def last(self, path: str) -> tuple[Any, str | None]:
        """(JSON body, X-Generation-Id) of the last request to a URL ending in `path`."""
        for _method, url, body, generation_id in reversed(self.requests):
            if url.split("?")[0].endswith(path):
                return body, generation_id
        raise AssertionError(f"no request to {path} was sent")


def shorten(value: Any) -> Any:
    """A request body for printing: base64 payloads replaced by their length."""
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shorten(v) for v in value]
    if isinstance(value, str) and len(value) > 200:
        head = value.partition(",")[0] + "," if value.startswith("data:") else ""
        return f"{head}<{len(value)} chars>"
    return value
