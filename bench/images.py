"""Natural-looking test pictures for the benchmarks: a deterministic landscape (sky, clouds, sun,
hills, film grain) that compresses like a photo, not like noise or a flat gradient.

Used by bench/gateway.py (the upstream's PNG) and bench/encode.py (encoder speed per megapixel).
"""

from __future__ import annotations

import io
import math
import random

from PIL import Image

IMAGE_SIZE = 1024
GRAIN = 4  # film grain amplitude: sets the 1024x1024 PNG to ~0.8 MB, its base64 to ~1.1 MB


def make_picture(size: int = IMAGE_SIZE) -> Image.Image:
    """The landscape as an RGB image, `size` pixels square."""
    from PIL import ImageChops, ImageDraw, ImageFilter

    rng = random.Random(20261125)
    sky = Image.linear_gradient("L").resize((size, size))
    channels = [
        sky.point(lambda v, lo=lo, span=span: lo + v * span // 255)
        for lo, span in ((70, 150), (120, 90), (200, 30))
    ]
    image = Image.merge("RGB", channels)
    clouds = (
        Image.frombytes("L", (16, 16), rng.randbytes(256))
        .resize((size, size), Image.Resampling.BICUBIC)
        .filter(ImageFilter.GaussianBlur(24))
    )
    white = Image.new("RGB", (size, size), (245, 245, 250))
    image = Image.composite(white, image, clouds.point(lambda v: max(0, v - 120) * 2))
    draw = ImageDraw.Draw(image)
    s = size / 1024
    draw.ellipse((700 * s, 140 * s, 820 * s, 260 * s), fill=(255, 236, 180))
    hills = (((70, 110, 80), 620, 80), ((50, 90, 55), 720, 60), ((35, 65, 40), 830, 40))
    for layer, (colour, base, amp) in enumerate(hills):
        points = [
            (
                x * s,
                (
                    base
                    + amp * math.sin(x / (90 + 40 * layer) + layer)
                    + 0.4 * amp * math.sin(x / 23 + 2 * layer)
                )
                * s,
            )
            for x in range(0, 1024 + 8, 8)
        ]
        draw.polygon([*points, (size, size), (0, size)], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    grain = Image.frombytes("L", (size, size), rng.randbytes(size * size))
    grain = grain.point(lambda v: v * GRAIN // 255)
    image = ImageChops.add(image, Image.merge("RGB", (grain, grain, grain)), 1.0, -(GRAIN // 2))
    return image


def make_png(size: int = IMAGE_SIZE) -> bytes:
    """The landscape as a PNG at Pillow's default compression."""
    buffer = io.BytesIO()
    make_picture(size).save(buffer, format="PNG")
    return buffer.getvalue()
