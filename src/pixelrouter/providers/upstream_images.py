"""The images an upstream sends, checked before anything is delivered or billed, and the
reference images it is sent.

Each image is decoded with Pillow (off the event loop); its size must be the request's, else
the answer is invalid (never bill something other than what was asked, SPEC §2). An image in
another format than the request's `output_format` is re-encoded; image `i` has seed `seed + i`.
A PNG sent as base64 for a PNG request is passed on as the same text, checked by its header and
trailer only (`passed_through`).

Every check fails with `fail(message)`: the provider's own error (`HTTPProvider.error`), which
names the provider.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from pixelrouter.errors import PixelrouterError, ProviderError, provider_caused
from pixelrouter.imagecodec import encode_image
from pixelrouter.types import (
    MEDIA_TYPES,
    Encoded,
    GeneratedImage,
    ImageRequest,
    ReferenceImage,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # an empty IEND chunk and its CRC
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}

Fail = Callable[[str], ProviderError]


@dataclass(frozen=True)
class RawImage:
    """Encoded bytes an upstream returned for image `index` of the request, not yet checked."""

    index: int
    content: Encoded


@dataclass(frozen=True)
class Delivered:
    images: list[RawImage]
    prompt_tokens: int | None = None


def decode_b64(text: Any, fail: Fail, *, what: str = "image") -> Encoded:
    """An image sent as base64 text or a `data:` URL, kept as text: its shape is checked here
    (ASCII, whole quads once whitespace is gone) and its bytes are decoded only when needed
    (`check_image` reads just the header and the trailer of a PNG it passes on)."""
    if not isinstance(text, str) or not text:
        raise fail(f"sent an empty or non-text {what}.")
    payload = text.strip()
    if payload.startswith("data:"):
        _, sep, payload = payload.partition(",")
        if not sep:
            raise fail(f"sent a malformed data URL as the {what}.")
    if not payload.isascii():
        raise fail(f"sent malformed base64 data as the {what}.")
    if len(payload) % 4 or any(space in payload for space in " \n\r\t"):
        payload = "".join(payload.split())
        payload += "=" * (-len(payload) % 4)
    if not payload or len(payload) % 4 == 1:
        raise fail(f"sent malformed base64 data as the {what}.")
    return Encoded(b64=payload)


async def each_image(
    request: ImageRequest, one: Callable[[int], Awaitable[tuple[Encoded, int | None]]]
) -> Delivered:
    """Make the request's images one upstream call each (image `i` with seed `seed + i`),
    concurrently. Images that arrive are delivered even when others fail (a failed image costs
    nothing); when none arrives, the most telling error is raised: a client error before a
    provider error."""
    results: list[tuple[Encoded, int | None] | BaseException]
    if request.n == 1:  # awaited in place: no task to make and wake for the one image
        try:
            results = [await one(0)]
        except PixelrouterError as exc:
            results = [exc]
    else:
        results = await asyncio.gather(*(one(i) for i in range(request.n)), return_exceptions=True)
    images: list[RawImage] = []
    errors: list[PixelrouterError] = []
    prompt_tokens: int | None = None
    for index, result in enumerate(results):
        if isinstance(result, PixelrouterError):
            errors.append(result)
        elif isinstance(result, BaseException):
            raise result  # a bug, not an upstream failure: let routing log it
        else:
            content, tokens = result
            images.append(RawImage(index, content))
            prompt_tokens = tokens if tokens is not None else prompt_tokens
    if not images:
        client_errors = [e for e in errors if not provider_caused(e)]
        raise (client_errors or errors)[0]
    return Delivered(images, prompt_tokens)


def passed_through(
    request: ImageRequest, raw: list[RawImage], fail: Fail
) -> list[GeneratedImage] | None:
    """The images when every one is a PNG passed on as sent (checked by header and trailer
    only, microseconds: no thread needed); None when any needs decoding."""
    if not raw or request.output_format != "png":
        return None
    images = []
    for item in sorted(raw, key=lambda r: r.index):
        passed = (
            pass_png(request, item, f"image {item.index + 1}", fail)
            if item.content.is_b64
            else None
        )
        if passed is None:
            return None
        images.append(passed)
    return images


def check_images(request: ImageRequest, raw: list[RawImage], fail: Fail) -> list[GeneratedImage]:
    """Decode, check the size and re-encode when needed; runs on a worker thread."""
    if not raw:
        raise fail("answered without any image.")
    return [check_image(request, item, fail) for item in sorted(raw, key=lambda r: r.index)]


def check_image(request: ImageRequest, item: RawImage, fail: Fail) -> GeneratedImage:
    label = f"image {item.index + 1}"
    if request.output_format == "png" and item.content.is_b64:
        passed = pass_png(request, item, label, fail)
        if passed is not None:
            return passed
    try:
        image = Image.open(io.BytesIO(item.content.data))  # reads the header only
    except (binascii.Error, ValueError):
        raise fail(f"sent malformed base64 data as {label}.") from None
    except Exception:
        raise fail(f"sent data that is not an image as {label}.") from None
    if image.size != (request.width, request.height):
        width, height = image.size
        raise fail(
            f"sent a {width}x{height} {label} for a {request.width}x{request.height} "
            "request; it is not delivered (never bill another size than asked)."
        )
    fmt = PIL_FORMATS.get(image.format or "")
    data: bytes | Encoded = item.content
    try:
        if fmt == request.output_format == "png":
            # Passed through as sent: checking every chunk's CRC finds a truncated or
            # damaged file at a fraction of the cost of decoding the pixels.
            image.verify()
        else:
            image.load()  # a truncated or damaged file fails here
    except Exception:
        raise fail(f"sent a damaged or truncated {label}.") from None
    if fmt != request.output_format:
        data = encode_image(image.convert("RGB"), request.output_format, request.output_compression)
    return GeneratedImage(
        data=data,
        media_type=MEDIA_TYPES[request.output_format],
        width=request.width,
        height=request.height,
        seed=request.seed + item.index,
        index=item.index,
    )


def pass_png(
    request: ImageRequest, item: RawImage, label: str, fail: Fail
) -> GeneratedImage | None:
    """A PNG sent as base64 for a PNG request is passed on as the same text. Only its header
    and trailer are decoded: the signature and IHDR give its size (it must be the request's),
    the IEND chunk at the very end shows it arrived whole. None when the data is not a PNG
    (the general path decodes and converts it)."""
    try:
        head = item.content.head(24)
        if head[:8] != PNG_SIGNATURE:
            return None
        tail = item.content.tail(len(PNG_TRAILER))
    except (binascii.Error, ValueError):
        raise fail(f"sent malformed base64 data as {label}.") from None
    if head[12:16] != b"IHDR":
        raise fail(f"sent a damaged or truncated {label}.")
    width, height = struct.unpack(">II", head[16:24])
    if (width, height) != (request.width, request.height):
        raise fail(
            f"sent a {width}x{height} {label} for a {request.width}x{request.height} "
            "request; it is not delivered (never bill another size than asked)."
        )
    if tail != PNG_TRAILER:
        raise fail(f"sent a damaged or truncated {label}.")
    return GeneratedImage(
        data=item.content,
        media_type=MEDIA_TYPES["png"],
        width=width,
        height=height,
        seed=request.seed + item.index,
        index=item.index,
    )


# ---------------------------------------------------------------------------- references


def reference_png(reference: ReferenceImage) -> bytes:
    """A reference image's RGB pixels as PNG bytes (CPU work: call it off the event loop)."""
    image = Image.frombytes("RGB", (reference.width, reference.height), reference.rgb)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


async def reference_pngs(request: ImageRequest) -> list[bytes]:
    if not request.references:
        return []
    return await asyncio.to_thread(lambda: [reference_png(r) for r in request.references])


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
