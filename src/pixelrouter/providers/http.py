"""What every HTTP provider shares: one client with per-attempt timeouts, the mapping of
upstream failures to our errors, and the checks that turn upstream bytes into delivered images.

Failure mapping (routing falls through on a `ProviderError`, never on an `InvalidRequest`):

- 5xx: `ProviderError` recorded with the upstream's status;
- 429: `ProviderError` (status 429), `retry_after_s` from `Retry-After`;
- connect / first-byte / total timeout, or an upstream 408: `ProviderError` 504 ("timeout");
- refused, reset, truncated body, malformed JSON, no image, not an image, an image of another
  size: `ProviderError` 502;
- 401, 402, 403: our key or account is wrong (configuration, not the client's fault):
  `ProviderError` 502 naming the provider; 404: a wrong `url` or `upstream_model`, the same;
- 400, 422: the upstream refuses this request: `InvalidRequest` with the upstream's message;
  413: `PayloadTooLarge` with the upstream's message.

Images: each is decoded with Pillow (off the event loop); its size must be the request's, else
the answer is invalid (never bill something other than what was asked, SPEC §2). An image in
another format than the request's `output_format` is re-encoded; image `i` has seed `seed + i`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import io
import ipaddress
import json
import logging
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import aiohttp.abc
import orjson
from PIL import Image

from pixelrouter import __version__
from pixelrouter.catalog import estimate_prompt_tokens
from pixelrouter.engine.encode import encode_image
from pixelrouter.errors import (
    InvalidRequest,
    PayloadTooLarge,
    PixelrouterError,
    ProviderError,
    provider_caused,
)
from pixelrouter.netpolicy import host_is_public, is_public_ip
from pixelrouter.providers import splice
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.providers.config import ProviderConfig
from pixelrouter.types import (
    MEDIA_TYPES,
    Encoded,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProgressEvent,
    ReferenceImage,
)

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 128 * 1024 * 1024
USER_AGENT = f"pixelrouter/{__version__}"
MAX_REDIRECTS = 4
_PRIVATE_URL = (
    "sent an image URL on a private, loopback or link-local address, which this server does "
    "not fetch (options.private_image_urls = true trusts this provider to name such URLs)."
)


class PublicResolver(aiohttp.abc.AbstractResolver):
    """Resolves as usual, and refuses a name with any address that is not public: checked
    where the connection's addresses come from, so a name that changes its answer between a
    check and the connection (DNS rebinding) is caught."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        if not found or not all(is_public_ip(str(entry["host"])) for entry in found):
            raise OSError(f"{host} resolves to a private, loopback or link-local address")
        return list(found)

    async def close(self) -> None:
        await self._inner.close()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # an empty IEND chunk and its CRC
PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}


@dataclass(frozen=True)
class UpstreamResponse:
    """A whole upstream answer, body read within the size cap."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


@dataclass(frozen=True)
class RawImage:
    """Encoded bytes an upstream returned for image `index` of the request, not yet checked."""

    index: int
    content: Encoded


@dataclass(frozen=True)
class Delivered:
    images: list[RawImage]
    prompt_tokens: int | None = None


class HTTPProvider(ProviderBase):
    """Base of the `pixelrouter`, `openrouter`, `openai-images` and `bfl` providers.

    A subclass sets `kind` and `default_parameters`, and implements `_deliver` (the protocol)
    and, when the protocol cannot express every request, `unsupported_reason`.
    """

    kind: ClassVar[str]
    default_parameters: ClassVar[tuple[str, ...]] = ()
    max_references: ClassVar[int] = 4
    # Whether an upstream's error text may reach our clients (see `check_status`).
    passes_error_text: ClassVar[bool] = False

    def __init__(self, config: ProviderConfig) -> None:
        if config.url is None:
            raise ValueError(f"provider {config.name!r} needs a url")
        self.config = config
        self.url = config.url.rstrip("/")
        options = config.options
        self._max_bytes = int(options.get("max_response_bytes", MAX_RESPONSE_BYTES))
        self._in_flight = 0
        t = config.timeouts
        # sock_read is the wait for the first byte of the answer, and then between any two
        # reads; connect covers taking a pooled connection or opening one.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=t.connect_s, sock_connect=t.connect_s, sock_read=t.first_byte_s
        )
        self._headers = {"User-Agent": USER_AGENT, **dict(options.get("headers", {}))}
        self._session: aiohttp.ClientSession | None = None  # made on first use, in its loop
        self._session_loop: asyncio.AbstractEventLoop | None = None
        # For image URLs on other hosts than the provider's: public addresses only.
        self._public_session: aiohttp.ClientSession | None = None
        self._public_loop: asyncio.AbstractEventLoop | None = None
        self._info: ProviderInfo | None = None

    # ------------------------------------------------------------------ Provider protocol

    @property
    def info(self) -> ProviderInfo:
        # Built once: routing reads it for every provider on every request, and it depends
        # only on the configuration.
        if self._info is None:
            self._info = self._make_info()
        return self._info

    def _make_info(self) -> ProviderInfo:
        parameters = self.config.options.get("supported_parameters")
        return ProviderInfo(
            slug=self.config.name,
            display_name=self.config.display_name,
            models=self.config.models,
            price=self.config.price,
            kind=self.kind,
            quantization=self.config.quantization or self.config.options.get("quantization"),
            data_collection=self.config.data_collection,
            zdr=self.config.zero_data_retention,
            supported_parameters=(
                tuple(parameters) if parameters is not None else self.declared_parameters()
            ),
        )

    def declared_parameters(self) -> tuple[str, ...]:
        """What `provider.require_parameters` may count on (`options.supported_parameters`
        overrides it)."""
        return self.default_parameters

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        if len(request.references) > self.max_references:
            return f"it takes at most {self.max_references} reference images"
        return None

    async def generate(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        reason = self.unsupported_reason(request)
        if reason is not None:
            raise self.error(
                f"cannot serve this request: {reason}.", status=400, error_type="invalid_request"
            )
        started = time.monotonic()
        total_s = self.config.timeouts.total_s
        self._in_flight += 1
        try:
            async with asyncio.timeout(total_s):
                delivered = await self._deliver(request)
                images = self._passed_through(request, delivered.images)
                if images is None:  # something to decode or convert: off the event loop
                    images = await asyncio.to_thread(self._check_images, request, delivered.images)
        except TimeoutError:
            raise self.error(
                f"did not finish within {total_s:g} s (timeouts.total_s).",
                status=504,
                error_type="timeout",
            ) from None
        finally:
            self._in_flight -= 1
        prompt_tokens = delivered.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = estimate_prompt_tokens(request.prompt)
        return ImageResult(
            request_id=request.id,
            model=request.model,
            images=tuple(images),
            generation_time_ms=int((time.monotonic() - started) * 1000),
            prompt_tokens=prompt_tokens,
            failed_images=request.n - len(images),
        )

    def readiness(self) -> tuple[bool, str]:
        # Health is judged by routing's outcome windows and circuit breaker, not guessed here.
        return True, "ok"

    def status(self) -> ProviderStatus:
        """Requests in flight to this provider stand in for its queue; `max_queue` caps them."""
        max_queue = self.config.max_queue
        return ProviderStatus(
            state="remote",
            queue_depth=self._in_flight,
            in_flight=self._in_flight,
            max_queue=max_queue,
            queue_full=max_queue is not None and self._in_flight >= max_queue,
        )

    async def probe(self) -> bool:
        """GET `{url}/{probe_path}` (default `models`) answers 200."""
        path = str(self.config.options.get("probe_path", "models")).lstrip("/")
        return await self._get_ok(f"{self.url}/{path}")

    async def aclose(self) -> None:
        for session in (self._session, self._public_session):
            if session is not None:
                await session.close()
        self._session = self._public_session = None

    # ------------------------------------------------------------------ for subclasses

    async def _deliver(self, request: ImageRequest) -> Delivered:
        raise NotImplementedError

    def upstream_model(self, request: ImageRequest) -> str:
        return self.config.upstream_model_for(request.model)

    def auth_headers(self) -> dict[str, str]:
        """Credentials for requests to this provider's own origin (Bearer by default)."""
        key = self.config.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def error(
        self,
        message: str,
        *,
        status: int = 502,
        error_type: str = "provider_unavailable",
        retry_after_s: float | None = None,
        upstream_status: int | None = None,
    ) -> ProviderError:
        """A fall-through failure whose message names this provider."""
        metadata: dict[str, Any] = {"provider_name": self.config.display_name}
        if upstream_status is not None:
            metadata["upstream_status"] = upstream_status
        return ProviderError(
            f"Provider {self.config.display_name} ({self.config.name}) {message}",
            status=status,
            retry_after_s=retry_after_s,
            error_type=error_type,
            metadata=metadata,
        )

    def _public_client(self) -> aiohttp.ClientSession:
        """A pool that connects only to public addresses (`PublicResolver`), without the
        provider's credentials or headers, for image URLs an upstream names on other hosts."""
        session, loop = self._public_session, asyncio.get_running_loop()
        if session is None or session.closed or self._public_loop is not loop:
            self._public_loop = loop
            session = self._public_session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT},
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(resolver=PublicResolver()),
            )
        return session

    def _client(self) -> aiohttp.ClientSession:
        """The provider's connection pool: aiohttp, whose C HTTP parser reads a megabyte answer
        about five times faster than a pure-Python one (docs/performance.md)."""
        session, loop = self._session, asyncio.get_running_loop()
        if session is None or session.closed or self._session_loop is not loop:
            self._session_loop = loop
            session = self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # no state carried between requests
            )
        return session

    async def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        follow_redirects: bool = False,
        json: Any = None,
        data: dict[str, str] | None = None,
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
        public_only: bool = False,
    ) -> UpstreamResponse:
        """One HTTP exchange, body read whole within the size cap; transport failures become
        `ProviderError`s. The status is not checked: see `check_status`.

        `json` is sent as a JSON body; `data` and `files` (field, (filename, bytes, type)) as a
        multipart form."""
        all_headers = {**(self.auth_headers() if auth else {}), **(headers or {})}
        body: bytes | aiohttp.FormData | None = None
        if json is not None:
            body = orjson.dumps(json)
            all_headers["Content-Type"] = "application/json"
        elif data is not None or files:
            form = aiohttp.FormData()
            for name, value in (data or {}).items():
                form.add_field(name, value)
            for name, (filename, content, content_type) in files or []:
                form.add_field(name, content, filename=filename, content_type=content_type)
            body = form
        t = self.config.timeouts
        client = self._public_client() if public_only else self._client()
        try:
            async with client.request(
                method, url, headers=all_headers, data=body, allow_redirects=follow_redirects
            ) as response:
                declared = response.content_length
                if declared is not None and declared > self._max_bytes:
                    raise self.error(f"sent a {what} answer larger than {self._max_bytes} bytes.")
                if declared is not None:
                    content = await response.read()
                else:  # no length announced: read in pieces, within the cap
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.content.iter_any():
                        size += len(chunk)
                        if size > self._max_bytes:
                            raise self.error(
                                f"sent a {what} answer larger than {self._max_bytes} bytes."
                            )
                        chunks.append(chunk)
                    content = b"".join(chunks)
                return UpstreamResponse(response.status, response.headers, content, url)
        except aiohttp.ConnectionTimeoutError:
            raise self.error(
                f"did not accept a connection within {t.connect_s:g} s (timeouts.connect_s).",
                status=504,
                error_type="timeout",
            ) from None
        except aiohttp.SocketTimeoutError:
            raise self.error(
                f"sent nothing for {t.first_byte_s:g} s during the {what} (timeouts.first_byte_s).",
                status=504,
                error_type="timeout",
            ) from None
        except TimeoutError as exc:
            raise self.error(
                f"timed out during the {what} ({type(exc).__name__}).",
                status=504,
                error_type="timeout",
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise self.error(f"could not be reached for the {what}: {_reason(exc)}.") from None
        except (
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
            aiohttp.ClientOSError,
        ) as exc:
            raise self.error(
                f"broke off the {what} answer (truncated or malformed HTTP): {_reason(exc)}."
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:
            raise self.error(
                f"failed during the {what} ({type(exc).__name__}: {_reason(exc)})."
            ) from None

    def check_status(self, response: UpstreamResponse, *, what: str) -> None:
        """Raise the error an upstream status means (see the module docstring)."""
        status = response.status
        if 200 <= status < 300:
            return
        detail = upstream_message(response.body)
        if detail:
            log.info(
                "provider %s answered HTTP %d for the %s: %s",
                self.config.name,
                status,
                what,
                detail,
            )
            # Whole in this server's log; to clients with what may name the upstream's insides
            # (paths, hosts, addresses, a traceback) taken out, except a pixelrouter worker's,
            # whose messages are written for clients.
            if not self.passes_error_text:
                detail = scrub_upstream_text(detail)
        said = f": {detail}" if detail else "."
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise self.error(
                f"is rate limiting pixelrouter (HTTP 429){said}",
                status=429,
                error_type="rate_limit_exceeded",
                retry_after_s=retry_after,
                upstream_status=429,
            )
        if status in (401, 402, 403):
            problem = "has no credit left on" if status == 402 else "rejected the credentials of"
            raise self.error(
                f"{problem} pixelrouter (HTTP {status}) for the {what}: check this provider's "
                f"api_key and account in pixelrouter.toml{said}",
                error_type="provider_unavailable",
                upstream_status=status,
            )
        if status in (400, 422):
            raise InvalidRequest(
                f"Provider {self.config.display_name} rejected the request (HTTP {status}){said}",
                metadata={"provider_name": self.config.display_name, "upstream_status": status},
            )
        if status == 413:
            raise PayloadTooLarge(
                f"Provider {self.config.display_name} found the request too large (HTTP 413){said}",
                metadata={"provider_name": self.config.display_name, "upstream_status": status},
            )
        if status == 404:
            raise self.error(
                f"answered HTTP 404 to the {what} at {response.url}: check this provider's url "
                f"and upstream_model in pixelrouter.toml{said}",
                upstream_status=404,
            )
        if status == 408:
            raise self.error(
                f"timed out the {what} itself (HTTP 408){said}",
                status=504,
                error_type="timeout",
                upstream_status=408,
            )
        if status >= 500:
            raise self.error(
                f"failed the {what} (HTTP {status}){said}",
                status=status,
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
                upstream_status=status,
            )
        raise self.error(
            f"answered the {what} with an unexpected HTTP {status}{said}", upstream_status=status
        )

    def parse_json(self, response: UpstreamResponse, *, what: str) -> dict[str, Any]:
        """The answer as a JSON object; anything else is an invalid upstream response."""
        try:
            payload = splice.loads(response.body)  # base64 lifted out, not parsed
        except (orjson.JSONDecodeError, ValueError, UnicodeDecodeError):
            raise self.error(f"sent malformed JSON as its {what} answer.") from None
        if not isinstance(payload, dict):
            raise self.error(f"sent JSON that is not an object as its {what} answer.")
        return payload

    async def post_json(self, url: str, body: dict[str, Any], *, what: str) -> dict[str, Any]:
        response = await self.send("POST", url, json=body, what=what)
        self.check_status(response, what=what)
        return self.parse_json(response, what=what)

    def decode_b64(self, text: Any, *, what: str = "image") -> Encoded:
        """An image sent as base64 text or a `data:` URL, kept as text: its shape is checked
        here (ASCII, whole quads once whitespace is gone) and its bytes are decoded only when
        needed (`_check_image` reads just the header and the trailer of a PNG it passes on)."""
        if not isinstance(text, str) or not text:
            raise self.error(f"sent an empty or non-text {what}.")
        payload = text.strip()
        if payload.startswith("data:"):
            _, sep, payload = payload.partition(",")
            if not sep:
                raise self.error(f"sent a malformed data URL as the {what}.")
        if not payload.isascii():
            raise self.error(f"sent malformed base64 data as the {what}.")
        if len(payload) % 4 or any(space in payload for space in " \n\r\t"):
            payload = "".join(payload.split())
            payload += "=" * (-len(payload) % 4)
        if not payload or len(payload) % 4 == 1:
            raise self.error(f"sent malformed base64 data as the {what}.")
        return Encoded(b64=payload)

    async def fetch_image(self, url: Any) -> Encoded:
        """An image the upstream sent by reference: a `data:` URL, or an http(s) URL (relative
        ones are on the provider's host). Credentials go only to the provider's own origin.
        An URL on another host is fetched only from public addresses, as reference images
        are (every redirect judged too), unless the provider is trusted to name private ones
        (`options.private_image_urls`)."""
        if not isinstance(url, str) or not url:
            raise self.error("sent an image entry with no data and no URL.")
        if url.startswith("data:"):
            return self.decode_b64(url)
        absolute = urljoin(self.url + "/", url)
        if urlsplit(absolute).scheme not in ("http", "https"):
            raise self.error(f"sent an image URL this server cannot fetch: {url[:80]!r}.")
        if same_origin(absolute, self.url):
            response = await self.send("GET", absolute, what="image download")
        elif self.config.options.get("private_image_urls", False):
            response = await self.send(
                "GET", absolute, what="image download", auth=False, follow_redirects=True
            )
        else:
            response = await self._fetch_public(absolute)
        self.check_status(response, what="image download")
        return Encoded(response.body)

    async def _fetch_public(self, url: str) -> UpstreamResponse:
        """GET an image URL on another host: public addresses only, redirects followed one by
        one and judged the same way. The host is checked first for a clear error; the pool's
        `PublicResolver` checks the addresses actually connected to, so a name that changes
        its answer in between (DNS rebinding) fails to connect."""
        for _ in range(MAX_REDIRECTS + 1):
            host = urlsplit(url).hostname or ""
            if not await asyncio.to_thread(host_is_public, host):
                raise self.error(_PRIVATE_URL)
            response = await self.send(
                "GET", url, what="image download", auth=False, public_only=True
            )
            location = response.headers.get("location")
            if response.status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise self.error("redirected an image download to a URL it cannot fetch.")
                continue
            return response
        raise self.error("redirected an image download too many times.")

    async def each_image(
        self, request: ImageRequest, one: Callable[[int], Awaitable[tuple[Encoded, int | None]]]
    ) -> Delivered:
        """Make the request's images one upstream call each (image `i` with seed `seed + i`),
        concurrently. Images that arrive are delivered even when others fail (a failed image
        costs nothing); when none arrives, the most telling error is raised: a client error
        before a provider error."""
        results: list[tuple[Encoded, int | None] | BaseException]
        if request.n == 1:  # awaited in place: no task to make and wake for the one image
            try:
                results = [await one(0)]
            except PixelrouterError as exc:
                results = [exc]
        else:
            results = await asyncio.gather(
                *(one(i) for i in range(request.n)), return_exceptions=True
            )
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

    async def _get_ok(self, url: str, *, headers: dict[str, str] | None = None) -> bool:
        try:
            async with asyncio.timeout(self.config.timeouts.total_s):
                response = await self.send(
                    "GET", url, what="probe", auth=same_origin(url, self.url), headers=headers
                )
        except (PixelrouterError, TimeoutError):
            return False
        return response.status == 200

    # ------------------------------------------------------------------ image checks

    def _check_images(self, request: ImageRequest, raw: list[RawImage]) -> list[GeneratedImage]:
        """Decode, check the size and re-encode when needed; runs on a worker thread."""
        if not raw:
            raise self.error("answered without any image.")
        return [self._check_image(request, item) for item in sorted(raw, key=lambda r: r.index)]

    def _passed_through(
        self, request: ImageRequest, raw: list[RawImage]
    ) -> list[GeneratedImage] | None:
        """The images when every one is a PNG passed on as sent (checked by header and
        trailer only, microseconds: no thread needed); None when any needs decoding."""
        if not raw or request.output_format != "png":
            return None
        images = []
        for item in sorted(raw, key=lambda r: r.index):
            passed = (
                self._pass_png(request, item, f"image {item.index + 1}")
                if item.content.is_b64
                else None
            )
            if passed is None:
                return None
            images.append(passed)
        return images

    def _check_image(self, request: ImageRequest, item: RawImage) -> GeneratedImage:
        label = f"image {item.index + 1}"
        if request.output_format == "png" and item.content.is_b64:
            passed = self._pass_png(request, item, label)
            if passed is not None:
                return passed
        try:
            image = Image.open(io.BytesIO(item.content.data))  # reads the header only
        except (binascii.Error, ValueError):
            raise self.error(f"sent malformed base64 data as {label}.") from None
        except Exception:
            raise self.error(f"sent data that is not an image as {label}.") from None
        if image.size != (request.width, request.height):
            width, height = image.size
            raise self.error(
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
            raise self.error(f"sent a damaged or truncated {label}.") from None
        if fmt != request.output_format:
            data = encode_image(
                image.convert("RGB"), request.output_format, request.output_compression
            )
        return GeneratedImage(
            data=data,
            media_type=MEDIA_TYPES[request.output_format],
            width=request.width,
            height=request.height,
            seed=request.seed + item.index,
            index=item.index,
        )

    def _pass_png(self, request: ImageRequest, item: RawImage, label: str) -> GeneratedImage | None:
        """A PNG sent as base64 for a PNG request is passed on as the same text. Only its
        header and trailer are decoded: the signature and IHDR give its size (it must be the
        request's), the IEND chunk at the very end shows it arrived whole. None when the data
        is not a PNG (the general path decodes and converts it)."""
        try:
            head = item.content.head(24)
            if head[:8] != PNG_SIGNATURE:
                return None
            tail = item.content.tail(len(PNG_TRAILER))
        except (binascii.Error, ValueError):
            raise self.error(f"sent malformed base64 data as {label}.") from None
        if head[12:16] != b"IHDR":
            raise self.error(f"sent a damaged or truncated {label}.")
        width, height = struct.unpack(">II", head[16:24])
        if (width, height) != (request.width, request.height):
            raise self.error(
                f"sent a {width}x{height} {label} for a {request.width}x{request.height} "
                "request; it is not delivered (never bill another size than asked)."
            )
        if tail != PNG_TRAILER:
            raise self.error(f"sent a damaged or truncated {label}.")
        return GeneratedImage(
            data=item.content,
            media_type=MEDIA_TYPES["png"],
            width=width,
            height=height,
            seed=request.seed + item.index,
            index=item.index,
        )


# ---------------------------------------------------------------------------- helpers


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


def upstream_message(body: bytes, limit: int = 500) -> str:
    """The human part of an upstream error body: OpenRouter/OpenAI `error.message`, FastAPI
    `detail`, a `message`, or the text itself, shortened."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text[:limit]
    message: Any = payload
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            message = error.get("message") or error
        elif isinstance(error, str):
            message = error
        elif "detail" in payload:
            message = payload["detail"]
        elif "message" in payload:
            message = payload["message"]
    if not isinstance(message, str):
        message = json.dumps(message)
    return message.strip()[:limit]


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s)\]>\"']+")
_PATH = re.compile(r"(?:\b[A-Za-z]:)?(?:[\\/][\w.@~-]+){2,}[\\/]?")
_ADDRESS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\b[\w-]+(?:\.[\w-]+)+:\d{2,5}\b")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:])[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f.]*(?![\w:])")


def _ipv6(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv6Address(match.group(0))
    except ValueError:
        return match.group(0)
    return "<address>"


SCRUBBED_LENGTH = 200


def scrub_upstream_text(text: str) -> str:
    """An upstream's error text as a client may see it: its first line, with URLs, file paths
    and network addresses replaced, at most 200 characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if line.lower().startswith("traceback"):
        return ""
    line = _URL.sub("<url>", line)
    line = _ADDRESS.sub("<address>", line)
    line = _IPV6_CANDIDATE.sub(_ipv6, line)
    line = _PATH.sub("<path>", line)
    return line[:SCRUBBED_LENGTH].strip()


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
