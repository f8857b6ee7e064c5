"""A batch's terminal webhook: the event, signed as Standard Webhooks are, sent to public
addresses only, tried again with backoff.

The signature is HMAC-SHA256 with the key's own secret (`whsec_...`, derived from the
server's signing secret and the key, so every gateway of a fleet signs alike) over
`{webhook-id}.{webhook-timestamp}.{body}`, in the `webhook-signature` header as `v1,<base64>`:
the scheme of the Standard Webhooks specification, which OpenAI's webhooks use, so the `openai`
SDK's `webhooks.verify_signature` and the `standardwebhooks` library verify it unchanged
(docs/batches.md, "Webhooks").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from pixelrouter.errors import InvalidRequest
from pixelrouter.netpolicy import host_is_public, is_public_ip

log = logging.getLogger("pixelrouter.batches")

# The event type for each terminal status (OpenRouter's `callback_url` documentation).
EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "cancelled": "batch.cancelled",
    "expired": "batch.expired",
}
TIMEOUT_S = 10.0
# Seconds before try n+1: 1, 4, 16, 64, 256, ... (at most an hour).
BACKOFF_BASE_S = 1.0
BACKOFF_FACTOR = 4.0


def backoff_s(attempt: int) -> float:
    return float(min(3600.0, BACKOFF_BASE_S * BACKOFF_FACTOR ** max(0, attempt - 1)))


def key_secret(server_secret: bytes, key_hash: str) -> str:
    """The webhook secret of one key: `whsec_` and 32 bytes of base64."""
    raw = hmac.new(server_secret, b"webhook-secret:" + key_hash.encode(), hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(raw).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event(batch: dict[str, Any], now: int) -> dict[str, Any]:
    return {
        "id": f"evt_{batch['id']}",
        "object": "event",
        "type": EVENTS[batch["status"]],
        "created_at": now,
        "data": batch,
    }


def check_callback_url(url: str, *, allow_private: bool) -> None:
    """At submission: an http(s) URL of a public host (unless this server may reach private
    ones, `allow_private_image_urls`), or a 400, as reference-image URLs are judged."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            "callback_url must be an https URL.", metadata={"param": "callback_url"}
        )
    if len(url) > 2048:
        raise InvalidRequest(
            "callback_url is longer than 2048 characters.", metadata={"param": "callback_url"}
        )
    if not allow_private and not host_is_public(parts.hostname):
        raise InvalidRequest(
            "callback_url's host is a private, loopback or link-local address (or does not "
            "resolve), which this server does not send to.",
            metadata={"param": "callback_url"},
        )


async def deliver(
    url: str, batch: dict[str, Any], secret: str, *, allow_private: bool
) -> tuple[bool, str]:
    """Send the event once: (delivered, why not). A 2xx is delivered; anything else, a
    timeout or a private address (judged again now, and at the address connected to: DNS
    may have changed) is not."""
    parts = urlsplit(url)
    public = allow_private or await asyncio.to_thread(host_is_public, parts.hostname or "")
    if not public:
        return False, "the host is not a public address"
    now = int(time.time())
    body = orjson.dumps(event(batch, now))
    webhook_id = f"evt_{batch['id']}"
    headers = {
        "content-type": "application/json",
        "user-agent": "pixelrouter-webhooks",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(now),
        "webhook-signature": sign(secret, webhook_id, now, body),
    }
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
            response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return False, type(exc).__name__
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not allow_private and peer is not None and not is_public_ip(str(peer[0])):
        return False, "the host connected to is not a public address"
    if 200 <= response.status_code < 300:
        return True, ""
    return False, f"HTTP {response.status_code}"
