"""Reference image validation (SPEC §2): formats, bounds, bombs, odd modes, base64, URLs."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from pixelrouter.errors import (
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    InvalidRequest,
    UnsupportedImageFormat,
)
from pixelrouter.refimages import (
    FetchPolicy,
    decode_base64_image,
    decode_reference,
    load_reference,
)


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    image = Image.linear_gradient("L").resize((width, height))
    return image.convert(mode)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    ref = decode_reference(encode(gradient(300, 200), fmt))
    assert (ref.width, ref.height) == (300, 200)
    assert len(ref.rgb) == 300 * 200 * 3


def test_large_references_are_resized_to_one_megapixel() -> None:
    ref = decode_reference(encode(gradient(2048, 1024), "PNG"))
    assert ref.width * ref.height <= 1024 * 1024
    assert (ref.source_width, ref.source_height) == (2048, 1024)
    assert abs(ref.width / ref.height - 2.0) < 0.01


def test_unsupported_format() -> None:
    with pytest.raises(UnsupportedImageFormat) as info:
        decode_reference(encode(gradient(100, 100), "BMP"))
    assert info.value.status == 400 and info.value.error_type == "unsupported_image_format"
    with pytest.raises(UnsupportedImageFormat):
        decode_reference(b"this is not an image at all")


def test_too_small_and_bad_aspect() -> None:
    with pytest.raises(ImageTooSmall):
        decode_reference(encode(gradient(63, 200), "PNG"))
    with pytest.raises(InvalidImage, match="aspect ratio"):
        decode_reference(encode(gradient(1000, 100), "PNG"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size but carries almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize(("w", "h"), [(5000, 4000), (100_000, 100_000), (100_000, 1)])
def test_bombs_and_huge_images_are_rejected_before_decoding(w: int, h: int) -> None:
    with pytest.raises((ImageTooLarge, InvalidImage)) as info:
        decode_reference(png_header_only(w, h))
    assert info.value.status == 400


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "L", "1"])
def test_odd_modes_become_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    ref = decode_reference(encode(gradient(128, 96, mode), fmt))
    assert len(ref.rgb) == ref.width * ref.height * 3


def test_alpha_is_flattened_onto_white() -> None:
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ref = decode_reference(encode(clear, "PNG"))
    assert set(ref.rgb) == {255}


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (80, 80), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    ref = decode_reference(buffer.getvalue())
    r, b = ref.rgb[0], ref.rgb[2]
    assert r > 200 and b < 50


def test_base64_forms() -> None:
    data = encode(gradient(64, 64), "PNG")
    text = base64.b64encode(data).decode()
    assert decode_base64_image("data:image/png;base64," + text) == data
    assert decode_base64_image(text) == data
    with pytest.raises(InvalidImage, match="malformed"):
        decode_base64_image("data:image/png;base64,@@@not-base64@@@")
    with pytest.raises(InvalidImage):
        decode_base64_image("data:image/png,rawbytes")


def test_truncated_image_is_a_clear_400() -> None:
    data = encode(gradient(256, 256), "PNG")
    with pytest.raises(InvalidImage) as info:
        decode_reference(data[: len(data) // 2])
    assert info.value.status == 400


def test_ipv6_forms_are_judged_by_the_ipv4_they_embed() -> None:
    from pixelrouter.netpolicy import is_public_ip

    assert is_public_ip("93.184.216.34") and is_public_ip("2606:4700::1111")
    assert is_public_ip("64:ff9b::5db8:d822")  # NAT64 of 93.184.216.34: public
    assert is_public_ip("2002:5db8:d822::1")  # 6to4 of 93.184.216.34: public
    for private in (
        "::127.0.0.1",
        "::7f00:1",
        "::ffff:192.168.1.1",
        "64:ff9b::c0a8:101",
        "2002:c0a8:0101::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "fe80::1%eth0",
        "not an address",
    ):
        assert not is_public_ip(private), private


async def test_urls_are_refused_unless_enabled_and_public() -> None:
    with pytest.raises(InvalidRequest, match="disabled"):
        await load_reference("https://example.com/cat.png", FetchPolicy(enabled=False))
    for url in (
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x.png",
        "http://[::1]/x.png",
        # IPv6 forms that carry a private IPv4 address inside them
        "http://[::127.0.0.1]/x.png",  # IPv4-compatible
        "http://[::ffff:10.0.0.1]/x.png",  # IPv4-mapped
        "http://[64:ff9b::7f00:1]/x.png",  # NAT64
        "http://[64:ff9b:1::a00:1]/x.png",  # local-use NAT64
        "http://[2002:7f00:1::1]/x.png",  # 6to4 of 127.0.0.1
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/x.png",  # Teredo, client 192.0.2.45
    ):
        with pytest.raises(InvalidRequest, match="private, loopback or link-local"):
            await load_reference(url, FetchPolicy(enabled=True))


@pytest.fixture
def image_server():
    """A loopback HTTP server: /cat.png an image, /slow trickles, /redirect points at /cat.png."""
    import http.server
    import threading
    import time

    png = encode(gradient(128, 96), "PNG")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/cat.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.end_headers()
            elif self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(50):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def test_fetch_when_allowed_follows_redirects_and_bounds_time(image_server) -> None:
    allowed = FetchPolicy(enabled=True, allow_private=True, timeout_s=1.0)
    ref = await load_reference(f"{image_server}/redirect", allowed)
    assert (ref.width, ref.height) == (128, 96)
    with pytest.raises(InvalidImage, match="did not download within"):
        await load_reference(f"{image_server}/slow", allowed)
    small = FetchPolicy(enabled=True, allow_private=True, max_bytes=100)
    with pytest.raises(ImageTooLarge):
        await load_reference(f"{image_server}/cat.png", small)


async def test_dns_rebinding_to_loopback_is_refused(image_server, monkeypatch) -> None:
    """The name resolves to a public address when checked, to loopback when connected."""
    import socket

    port = int(image_server.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34"])

    def rebinding(host, *args, **kwargs):
        if host in ("images.example", b"images.example"):
            address = next(answers, "127.0.0.1")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with pytest.raises(InvalidRequest, match="private, loopback"):
        await load_reference(f"http://images.example:{port}/cat.png", FetchPolicy(enabled=True))
