"""Small test helpers: decode images out of responses and SSE bodies."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image


def png_size(b64: str) -> tuple[int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image.size


def data_url_image(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def sse_events(body: str) -> tuple[list[object], list[str]]:
    """(data payloads in order, comment lines) of an SSE body; '[DONE]' kept as a string."""
    events: list[object] = []
    comments: list[str] = []
    for block in body.split("\n\n"):
        for line in block.splitlines():
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line.startswith("data: "):
                payload = line[6:]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events, comments


def tiny_png(width: int = 96, height: int = 64) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(width: int = 96, height: int = 64) -> str:
    return "data:image/png;base64," + base64.b64encode(tiny_png(width, height)).decode()
