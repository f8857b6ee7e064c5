"""The event streams pixelrouter speaks, written once: `data:` events, comments, and the two
comments of its own that a waiting client gets, the keep-alive and the denoising progress
(`: PIXELROUTER PROGRESS k/N`).

The server writes them (`api/`), `pixelrouter generate --server` reads them, and the
playground page is given the progress prefix from here (`web/`).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

KEEPALIVE = "PIXELROUTER PROCESSING"
PROGRESS = "PIXELROUTER PROGRESS"

_PROGRESS_LINE = re.compile(rf"^: {PROGRESS} (\d+)/(\d+)")


def sse_data(payload: dict[str, Any] | str) -> bytes:
    if isinstance(payload, str):
        return f"data: {payload}\n\n".encode()
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def progress_comment(step: int, total_steps: int) -> bytes:
    """Denoising step `step` of `total_steps`, as a comment every SSE client may ignore."""
    return sse_comment(f"{PROGRESS} {step}/{total_steps}")


def read_progress(line: str) -> tuple[int, int] | None:
    """(step, total steps) of a stream line that is a progress comment, else None."""
    match = _PROGRESS_LINE.match(line)
    return None if match is None else (int(match[1]), int(match[2]))
