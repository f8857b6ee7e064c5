"""What an upstream answered: its body read within the size cap (`read_body`), its status
mapped to our errors (`check_status`), its JSON object (`parse_json`).

Status mapping (routing falls through on a `ProviderError`, never on an `InvalidRequest`):

- 5xx: `ProviderError` recorded with the upstream's status;
- 429: `ProviderError` (status 429), `retry_after_s` from `Retry-After`;
- an upstream 408: `ProviderError` 504 ("timeout");
- a body over the size cap, malformed JSON, JSON that is not an object: `ProviderError` 502;
- 401, 402, 403: our key or account is wrong (configuration, not the client's fault):
  `ProviderError` 502 naming the provider; 404: a wrong `url` or `upstream_model`, the same;
- 400, 422: the upstream refuses this request: `InvalidRequest` with the upstream's message;
  413: `PayloadTooLarge` with the upstream's message.

Every failure is the provider's own error (`HTTPProvider.error`), which names the provider.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from pixelrouter.errors import InvalidRequest, PayloadTooLarge, ProviderError
from pixelrouter.providers import splice
from pixelrouter.providers.config import ProviderConfig
from pixelrouter.providers.upstream_errors import (
    parse_retry_after,
    scrub_upstream_text,
    upstream_message,
)
from pixelrouter.providers.upstream_images import Fail

# The transport's log, where operators already look for what an upstream answered.
log = logging.getLogger("pixelrouter.providers.http")


class ProviderErrors(Protocol):
    """`HTTPProvider.error`: a fall-through failure whose message names the provider."""

    def __call__(
        self,
        message: str,
        *,
        status: int = ...,
        error_type: str = ...,
        retry_after_s: float | None = ...,
        upstream_status: int | None = ...,
    ) -> ProviderError: ...


@dataclass(frozen=True)
class UpstreamResponse:
    """A whole upstream answer, body read within the size cap."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


async def read_body(
    response: aiohttp.ClientResponse, *, max_bytes: int, what: str, fail: Fail
) -> bytes:
    """The whole body, refused once it is larger than `max_bytes` (announced or read)."""
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise fail(f"sent a {what} answer larger than {max_bytes} bytes.")
    if declared is not None:
        return await response.read()
    # No length announced: read in pieces, within the cap.
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise fail(f"sent a {what} answer larger than {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def check_status(
    response: UpstreamResponse,
    *,
    what: str,
    config: ProviderConfig,
    error: ProviderErrors,
    passes_error_text: bool,
) -> None:
    """Raise the error an upstream status means (see the module docstring). The upstream's
    error text reaches clients scrubbed (`scrub_upstream_text`) unless `passes_error_text`."""
    status = response.status
    if 200 <= status < 300:
        return
    detail = upstream_message(response.body)
    if detail:
        log.info(
            "provider %s answered HTTP %d for the %s: %s",
            config.name,
            status,
            what,
            detail,
        )
        # Whole in this server's log; to clients with what may name the upstream's insides
        # (paths, hosts, addresses, a traceback) taken out, except a pixelrouter worker's,
        # whose messages are written for clients.
        if not passes_error_text:
            detail = scrub_upstream_text(detail)
    said = f": {detail}" if detail else "."
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise error(
            f"is rate limiting pixelrouter (HTTP 429){said}",
            status=429,
            error_type="rate_limit_exceeded",
            retry_after_s=retry_after,
            upstream_status=429,
        )
    if status in (401, 402, 403):
        problem = "has no credit left on" if status == 402 else "rejected the credentials of"
        raise error(
            f"{problem} pixelrouter (HTTP {status}) for the {what}: check this provider's "
            f"api_key and account in pixelrouter.toml{said}",
            error_type="provider_unavailable",
            upstream_status=status,
        )
    if status in (400, 422):
        raise InvalidRequest(
            f"Provider {config.display_name} rejected the request (HTTP {status}){said}",
            metadata={"provider_name": config.display_name, "upstream_status": status},
        )
    if status == 413:
        raise PayloadTooLarge(
            f"Provider {config.display_name} found the request too large (HTTP 413){said}",
            metadata={"provider_name": config.display_name, "upstream_status": status},
        )
    if status == 404:
        raise error(
            f"answered HTTP 404 to the {what} at {response.url}: check this provider's url "
            f"and upstream_model in pixelrouter.toml{said}",
            upstream_status=404,
        )
    if status == 408:
        raise error(
            f"timed out the {what} itself (HTTP 408){said}",
            status=504,
            error_type="timeout",
            upstream_status=408,
        )
    if status >= 500:
        raise error(
            f"failed the {what} (HTTP {status}){said}",
            status=status,
            retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            upstream_status=status,
        )
    raise error(
        f"answered the {what} with an unexpected HTTP {status}{said}", upstream_status=status
    )


def parse_json(response: UpstreamResponse, *, what: str, fail: Fail) -> dict[str, Any]:
    """The answer as a JSON object; anything else is an invalid upstream response."""
    try:
        payload = splice.loads(response.body)  # base64 lifted out, not parsed
    except (orjson.JSONDecodeError, ValueError, UnicodeDecodeError):
        raise fail(f"sent malformed JSON as its {what} answer.") from None
    if not isinstance(payload, dict):
        raise fail(f"sent JSON that is not an object as its {what} answer.")
    return payload
