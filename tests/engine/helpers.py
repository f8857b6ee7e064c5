"""Shared helpers for engine tests: requests, a plain diffusers call, decoded pixels."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from pixelrouter.types import ImageRequest, ReferenceImage

MODEL = "black-forest-labs/flux.2-klein-4b"


def make_request(
    prompt: str = "a red cat on a sofa", seed: int = 1, size: int = 128, **fields: Any
) -> ImageRequest:
    return ImageRequest(
        id=f"gen-{uuid.uuid4().hex[:16]}",
        model=MODEL,
        prompt=prompt,
        width=fields.pop("width", size),
        height=fields.pop("height", size),
        seed=seed,
        seed_given=True,
        **fields,
    )


def plain_call(
    pipe: Any,
    prompt: str,
    seed: int,
    size: int = 128,
    steps: int = 4,
    guidance: float = 1.0,
    image: list[Image.Image] | None = None,
) -> np.ndarray:
    """What SPEC §2 promises anyone can run: a plain diffusers call with a CPU generator."""
    import torch

    output = pipe(
        prompt=prompt,
        image=image,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return np.asarray(output.images[0])


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def rounding_diff(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(max abs difference in 1/255 steps, fraction of values that differ)."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(diff.max()), float((diff > 0).mean())


def reference(seed: int = 7, width: int = 96, height: int = 80) -> ReferenceImage:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return ReferenceImage(
        rgb=rgb.tobytes(), width=width, height=height, source_width=width, source_height=height
    )


@contextlib.contextmanager
def started_engine(**overrides: Any) -> Iterator[Any]:
    """A demo engine with `overrides` over its configuration, ready; shut down at the end."""
    from pixelrouter.engine.pipeline import EngineConfig
    from pixelrouter.engine.scheduler import Engine

    engine = Engine(EngineConfig(demo=True, device="cpu", **overrides))
    engine.start()
    try:
        assert engine.wait_ready(120), engine.readiness()
        yield engine
    finally:
        engine.shutdown()
