"""PNG/JPEG/WebP encoding and the OpenAI `output_compression` → quality rule."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pixelrouter.imagecodec import DEFAULT_QUALITY, encode_image, quality_for


def _picture(width: int = 96, height: int = 64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 40, size=rgb.shape, dtype=np.uint8)
    return Image.fromarray(rgb + noise)


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
def test_encodes_the_asked_format_and_size(fmt: str, pil_format: str) -> None:
    data = encode_image(_picture(), fmt)  # type: ignore[arg-type]
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == pil_format
    assert decoded.size == (96, 64)
    assert decoded.mode == "RGB"


def test_png_is_lossless() -> None:
    picture = _picture()
    decoded = Image.open(io.BytesIO(encode_image(picture, "png")))
    assert np.array_equal(np.asarray(decoded), np.asarray(picture))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_lower_output_compression_gives_smaller_files(fmt: str) -> None:
    picture = _picture(256, 256)
    small = encode_image(picture, fmt, 10)  # type: ignore[arg-type]
    large = encode_image(picture, fmt, 100)  # type: ignore[arg-type]
    assert len(small) < len(large)


def test_quality_rule() -> None:
    assert quality_for(None) == DEFAULT_QUALITY
    assert quality_for(100) == 100
    assert quality_for(50) == 50
    assert quality_for(0) == 1
    assert quality_for(250) == 100


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="png, jpeg or webp"):
        encode_image(_picture(), "gif")  # type: ignore[arg-type]
