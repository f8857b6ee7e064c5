"""Reference images: decode `data:` URLs, base64 or uploads, validate them (SPEC §2), and
fetch `http(s)` URLs only when allowed, refusing private addresses."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image, ImageOps

from pixelrouter.errors import (
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    InvalidRequest,
    UnsupportedImageFormat,
)
from pixelrouter.netpolicy import host_is_public, is_public_ip
from pixelrouter.types import ReferenceImage

MAX_REFERENCES = 4
MIN_REFERENCE_SIDE = 64
MAX_REFERENCE_SIDE = 4096
MAX_REFERENCE_ASPECT = 8
MODEL_REFERENCE_PIXELS = 1024 * 1024
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP", "GIF": "GIF"}


@dataclass(frozen=True)
class FetchPolicy:
    """Whether and how `http(s)` image URLs may be fetched."""

    enabled: bool = False
    allow_private: bool = False
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0


def decode_reference(data: bytes, *, position: int = 1) -> ReferenceImage:
    """Validate an encoded image and turn it into RGB pixels of at most 1 MP."""
    label = f"reference image {position}"
    if not data:
        raise InvalidImage(f"{label} is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))  # reads the header only
            fmt = probe.format or ""
            width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{label} is too large to decode safely.") from exc
    except Exception as exc:
        raise UnsupportedImageFormat(
            f"{label} is not a PNG, JPEG, WebP or GIF image the server can read."
        ) from exc
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedImageFormat(
            f"{label} is {fmt or 'an unknown format'}; send PNG, JPEG, WebP or GIF."
        )
    # Checked on the header, before any pixel is decoded: decompression bombs stop here.
    if width > MAX_REFERENCE_SIDE or height > MAX_REFERENCE_SIDE:
        raise ImageTooLarge(
            f"{label} is {width}x{height}; each side must be at most {MAX_REFERENCE_SIDE} px.",
            metadata={"width": width, "height": height},
        )
    if width < MIN_REFERENCE_SIDE or height < MIN_REFERENCE_SIDE:
        raise ImageTooSmall(
            f"{label} is {width}x{height}; each side must be at least {MIN_REFERENCE_SIDE} px.",
            metadata={"width": width, "height": height},
        )
    if max(width, height) > MAX_REFERENCE_ASPECT * min(width, height):
        raise InvalidImage(
            f"{label} is {width}x{height}; its aspect ratio must be at most "
            f"{MAX_REFERENCE_ASPECT}:1."
        )
    try:
        probe.seek(0)  # first frame of an animated GIF / WebP
        probe.load()
        image = ImageOps.exif_transpose(probe)
        image = _to_rgb(image)
    except Exception as exc:
        raise InvalidImage(f"{label} could not be decoded: the file is damaged.") from exc
    image = _fit_area(image, MODEL_REFERENCE_PIXELS)
    return ReferenceImage(
        rgb=image.tobytes(),
        width=image.width,
        height=image.height,
        source_width=width,
        source_height=height,
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten alpha onto white and convert palettes, CMYK and 16-bit images to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 257).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _fit_area(image: Image.Image, max_pixels: int) -> Image.Image:
    if image.width * image.height <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (image.width * image.height))
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def decode_base64_image(text: str, *, position: int = 1) -> bytes:
    """Bytes of a `data:image/...;base64,` URL or bare base64 text."""
    payload = text.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidImage(
                f"reference image {position}: a data URL must look like "
                "'data:image/png;base64,<data>'."
            )
    payload = "".join(payload.split())
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"reference image {position}: the base64 data is malformed.") from exc


def _peer_is_public(response: httpx.Response) -> bool:
    """The address actually connected to: a name that resolved to a public address when it
    was checked and to a private one at connect time (DNS rebinding) is caught here."""
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    return peer is None or is_public_ip(str(peer[0]))


async def fetch_image_url(url: str, policy: FetchPolicy, *, position: int = 1) -> bytes:
    """Download an `http(s)` reference image within the policy's limits."""
    if not policy.enabled:
        raise InvalidRequest(
            f"reference image {position}: fetching image URLs is disabled on this server; "
            "send the image inline as a 'data:image/png;base64,...' URL."
        )
    try:
        async with asyncio.timeout(policy.timeout_s):  # the whole download, not each read
            return await _fetch(url, policy, position)
    except TimeoutError:
        raise InvalidImage(
            f"reference image {position} did not download within {policy.timeout_s:g} s.",
            error_type="image_download_failed",
        ) from None


async def _fetch(url: str, policy: FetchPolicy, position: int) -> bytes:
    current = url
    for _ in range(4):  # follow a few redirects, checking every hop
        parts = urlsplit(current)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"reference image {position}: unsupported URL {current!r}.")
        if not policy.allow_private:
            public = await asyncio.to_thread(host_is_public, parts.hostname)
            if not public:
                raise InvalidRequest(
                    f"reference image {position}: the URL's host is a private, loopback or "
                    "link-local address, which this server does not fetch."
                )
        timeout = httpx.Timeout(policy.timeout_s)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
                client.stream("GET", current) as response,
            ):
                if not policy.allow_private and not _peer_is_public(response):
                    raise InvalidRequest(
                        f"reference image {position}: the URL's host is a private, loopback "
                        "or link-local address, which this server does not fetch."
                    )
                if response.is_redirect and "location" in response.headers:
                    current = str(response.url.join(response.headers["location"]))
                    continue
                if response.status_code != 200:
                    raise InvalidImage(
                        f"reference image {position}: fetching it returned HTTP "
                        f"{response.status_code}.",
                        error_type="image_download_failed",
                    )
                chunks: list[bytes] = []
                total = 0
                async for chunk in response.aiter_bytes():
                    total += len(chunk)
                    if total > policy.max_bytes:
                        raise ImageTooLarge(
                            f"reference image {position} is larger than {policy.max_bytes} bytes."
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise InvalidImage(
                f"reference image {position} could not be downloaded ({type(exc).__name__}).",
                error_type="image_download_failed",
            ) from exc
    raise InvalidImage(
        f"reference image {position}: too many redirects.", error_type="image_download_failed"
    )


async def load_reference(url: str, policy: FetchPolicy, *, position: int = 1) -> ReferenceImage:
    """A reference given as a URL (`data:`, `http(s)`) or bare base64, decoded off the loop."""
    text = url.strip()
    if text.startswith(("http://", "https://")):
        data = await fetch_image_url(text, policy, position=position)
    else:
        data = decode_base64_image(text, position=position)
    return await asyncio.to_thread(decode_reference, data, position=position)
