"""Image encoding speed: ms and bytes per megapixel for PNG (Pillow at every zlib level, and faster
PNG writers when installed), JPEG and WebP, on a natural-looking picture (bench/images.py).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/encode.py [--size 1024] [--repeat 7] [--quick]
     [--json FILE]
Prints one JSON object, then a table. Every PNG writer's output is decoded again and must equal
the source pixels. Optional writers (measured when importable, "not installed" otherwise; none is
a dependency of pixelrouter): pyspng-seunglab (libspng), fpng (py-fpng-nb), opencv-python-headless.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from images import make_picture
from PIL import Image

Encoder = Callable[[Image.Image, np.ndarray], bytes]


def _pillow(fmt: str, **options: Any) -> Encoder:
    def encode(picture: Image.Image, _rgb: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode


def _optional_png_writers() -> dict[str, Encoder | str]:
    """name → encoder, or the reason it is not measured."""
    writers: dict[str, Encoder | str] = {}
    try:
        import pyspng  # type: ignore[import-not-found]

        for level in (1, 6):
            writers[f"pyspng level {level}"] = lambda _p, rgb, level=level: pyspng.encode(
                rgb, compress_level=level
            )
    except ImportError:
        writers["pyspng"] = "not installed (pip install pyspng-seunglab)"
    try:
        import fpng  # type: ignore[import-not-found]

        writers["fpng"] = lambda _p, rgb: fpng.from_ndarray(rgb)
    except ImportError:
        writers["fpng"] = "not installed (pip install fpng)"
    try:
        import cv2  # type: ignore[import-not-found]

        for level in (1, 6):

            def encode(_p: Image.Image, rgb: np.ndarray, level: int = level) -> bytes:
                # OpenCV wants BGR: the conversion is part of its cost.
                bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, level])
                assert ok
                return data.tobytes()

            writers[f"opencv level {level}"] = encode
    except ImportError:
        writers["opencv"] = "not installed (pip install opencv-python-headless)"
    return writers


def encoders(quick: bool) -> dict[str, tuple[str, Encoder | str]]:
    """name → (format, encoder or reason)."""
    levels = (0, 1, 6, 9) if quick else range(10)
    table: dict[str, tuple[str, Encoder | str]] = {
        f"Pillow PNG level {level}": ("png", _pillow("PNG", compress_level=level))
        for level in levels
    }
    for name, writer in _optional_png_writers().items():
        table[name] = ("png", writer)
    for quality in (75, 90, 100):
        table[f"Pillow JPEG q{quality}"] = ("jpeg", _pillow("JPEG", quality=quality))
    for quality, method in ((90, 0), (75, 4), (90, 4), (100, 4)):
        table[f"Pillow WebP q{quality} m{method}"] = (
            "webp",
            _pillow("WEBP", quality=quality, method=method),
        )
    return table


def measure(encode: Encoder, picture: Image.Image, rgb: np.ndarray, repeat: int) -> dict:
    data = encode(picture, rgb)  # warm-up, and the bytes to check
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        encode(picture, rgb)
        times.append(time.perf_counter() - start)
    return {"ms": statistics.median(times) * 1000, "bytes": len(data), "data": data}


def run(size: int, repeat: int, quick: bool) -> dict[str, Any]:
    picture = make_picture(size)
    rgb = np.asarray(picture)
    megapixels = size * size / 1_048_576
    rows = []
    for name, (fmt, encoder) in encoders(quick).items():
        if isinstance(encoder, str):
            rows.append({"encoder": name, "format": fmt, "status": encoder})
            continue
        result = measure(encoder, picture, rgb, repeat)
        decoded = Image.open(io.BytesIO(result["data"]))
        row: dict[str, Any] = {
            "encoder": name,
            "format": fmt,
            "status": "ok",
            "ms_per_mp": round(result["ms"] / megapixels, 2),
            "kb_per_mp": round(result["bytes"] / 1024 / megapixels, 1),
        }
        if fmt == "png":
            row["lossless"] = bool(np.array_equal(np.asarray(decoded.convert("RGB")), rgb))
            assert row["lossless"], f"{name} did not round-trip"
        rows.append(row)
    return {
        "benchmark": "encode",
        "image": f"bench/images.py landscape, {size}x{size}",
        "megapixels": round(megapixels, 3),
        "repeat": repeat,
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "machine": platform.machine(),
        "results": rows,
    }


def table(report: dict[str, Any]) -> str:
    lines = [
        f"encoding {report['image']} (median of {report['repeat']})",
        f"  {'encoder':<24} {'ms/MP':>8} {'KB/MP':>8}",
    ]
    for row in report["results"]:
        if row["status"] != "ok":
            lines.append(f"  {row['encoder']:<24} {row['status']}")
        else:
            lines.append(f"  {row['encoder']:<24} {row['ms_per_mp']:>8} {row['kb_per_mp']:>8}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="picture side in pixels")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="256x256, 2 repeats, fewer levels")
    parser.add_argument("--json", help="also write the JSON object to this file")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeat = 256, 2
    report = run(args.size, args.repeat, args.quick)
    text = json.dumps(report)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
