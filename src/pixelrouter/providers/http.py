"""What every HTTP provider shares: one client with per-attempt timeouts, the mapping of
transport failures to our errors, and image downloads that reach only public addresses.

Transport failures (routing falls through on a `ProviderError`):

- connect / first-byte / total timeout: `ProviderError` 504 ("timeout");
- refused, reset, truncated or malformed HTTP: `ProviderError` 502.

What an upstream answered (the body within its size cap, the status, the JSON) is judged by
`upstream_answers`, which lists what each status becomes; the images it sends are checked by
`upstream_images` before anything is delivered (no image, not an image, an image of another
size: `ProviderError` 502).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import aiohttp.abc
import orjson

from pixelrouter import __version__
from pixelrouter.catalog import estimate_prompt_tokens
from pixelrouter.errors import PixelrouterError, ProviderError
from pixelrouter.netpolicy import host_is_public, is_public_ip
from pixelrouter.providers import upstream_answers
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.providers.config import ProviderConfig
from pixelrouter.providers.upstream_answers import UpstreamResponse, read_body
from pixelrouter.providers.upstream_images import (
    Delivered,
    check_images,
    decode_b64,
    passed_through,
)
from pixelrouter.types import Encoded, ImageRequest, ImageResult, ProgressEvent

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
            self._info = self.config.info(self.kind, self.declared_parameters())
        return self._info

    def declared_parameters(self) -> tuple[str, ...]:
        """What `provider.require_parameters` may count on (`options.supported_parameters`
        overrides it)."""
        return self.default_parameters

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        if len(request.references) > self.max_references:
            return f"it takes at most {self.max_references} reference images"
        return super().unsupported_reason(request)

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
                images = passed_through(request, delivered.images, self.error)
                if images is None:  # something to decode or convert: off the event loop
                    images = await asyncio.to_thread(
                        check_images, request, delivered.images, self.error
                    )
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
                content = await read_body(
                    response, max_bytes=self._max_bytes, what=what, fail=self.error
                )
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
        """Raise the error an upstream status means (`upstream_answers.check_status`)."""
        upstream_answers.check_status(
            response,
            what=what,
            config=self.config,
            error=self.error,
            passes_error_text=self.passes_error_text,
        )

    def parse_json(self, response: UpstreamResponse, *, what: str) -> dict[str, Any]:
        """The answer as a JSON object; anything else is an invalid upstream response."""
        return upstream_answers.parse_json(response, what=what, fail=self.error)

    async def post_json(self, url: str, body: dict[str, Any], *, what: str) -> dict[str, Any]:
        response = await self.send("POST", url, json=body, what=what)
        self.check_status(response, what=what)
        return self.parse_json(response, what=what)

    def decode_b64(self, text: Any, *, what: str = "image") -> Encoded:
        """An image sent as base64 text or a `data:` URL (`upstream_images.decode_b64`)."""
        return decode_b64(text, self.error, what=what)

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

    async def _get_ok(self, url: str, *, headers: dict[str, str] | None = None) -> bool:
        try:
            async with asyncio.timeout(self.config.timeouts.total_s):
                response = await self.send(
                    "GET", url, what="probe", auth=same_origin(url, self.url), headers=headers
                )
        except (PixelrouterError, TimeoutError):
            return False
        return response.status == 200


# ---------------------------------------------------------------------------- helpers


def same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
