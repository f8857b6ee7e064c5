"""Small test helpers: decode images out of responses and SSE bodies, run a benchmark."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


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


def run_bench(script: str, *args: str, out: Path, timeout: float) -> dict[str, Any]:
    """Run `bench/<script>` with `args` and `--json out` (one thread for torch); its exit status
    must be 0. The JSON report it wrote."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args, "--json", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.exists(), done.stdout[-2000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    assert done.returncode == 0, (done.stdout[-2000:] + done.stderr[-3000:], report)
    return report


def chat_image_body(
    prompt: str, *, ratio: str = "1:1", seed: int | None = None, **extra: Any
) -> dict[str, Any]:
    """A chat completions body asking klein for one image at the 0.5K tier (the batch tests'
    request)."""
    config: dict[str, Any] = {"aspect_ratio": ratio, "image_size": "0.5K"}
    if seed is not None:
        config["seed"] = seed
    return {
        "model": "black-forest-labs/flux.2-klein-4b",
        "messages": [{"role": "user", "content": prompt}],
        "modalities": ["image"],
        "image_config": config,
        **extra,
    }
