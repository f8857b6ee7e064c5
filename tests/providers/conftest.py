"""Shared helpers of the provider tests: requests and reference images."""

from __future__ import annotations

from typing import Any

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.refimages import decode_reference
from pixelrouter.types import ImageRequest, ReferenceImage

from .fake import image_bytes


def make_request(**overrides: Any) -> ImageRequest:
    values: dict[str, Any] = {
        "id": "gen-provider-test",
        "model": KLEIN_4B.id,
        "prompt": "a red fox in the snow",
        "width": 512,
        "height": 512,
        "seed": 7,
        "seed_given": True,
    }
    values.update(overrides)
    return ImageRequest(**values)


def reference(width: int = 96, height: int = 64) -> ReferenceImage:
    return decode_reference(image_bytes(width, height, color=(0, 200, 0)))
