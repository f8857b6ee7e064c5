"""Encoding generated pixels as PNG, JPEG or WebP bytes.

`output_compression` follows the OpenAI Images API, which documents it as "the compression level
(0-100%) for the generated images", for jpeg and webp only, **defaulting to 100**. A default of
100 only makes sense if 100 is the best-looking output, and that is how OpenAI's service behaves
(50 gives a smaller, lossier file than 100). So the value is used as the encoder's quality
directly: `quality = output_compression` (0 is clamped to 1, the lowest quality the encoders
take). Without a value we use quality 90, a good size/quality trade-off, not OpenAI's 100.

PNG ignores `output_compression` (it is lossless) and uses zlib level 1: measured on 1024x1024
images here, level 1 takes 115-140 ms against 220-330 ms for Pillow's default 6, for files about
10-15% larger.
"""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image

PNG_COMPRESS_LEVEL = 1
DEFAULT_QUALITY = 90


def quality_for(compression: int | None) -> int:
    """The JPEG/WebP quality for an OpenAI-style `output_compression` (see the module docstring)."""
    if compression is None:
        return DEFAULT_QUALITY
    return max(1, min(100, int(compression)))


def encode_image(
    image: Image.Image,
    fmt: Literal["png", "jpeg", "webp"],
    compression: int | None = None,
) -> bytes:
    """Encode one RGB image; `compression` (0..100) applies to jpeg and webp only."""
    buffer = io.BytesIO()
    if image.mode != "RGB":
        image = image.convert("RGB")
    if fmt == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=quality_for(compression))
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=quality_for(compression))
    else:
        raise ValueError(f"unsupported output format {fmt!r}: use png, jpeg or webp")
    return buffer.getvalue()
