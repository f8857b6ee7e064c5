"""What an upstream's error answer says: its message (`upstream_message`), what of it a client
may see (`scrub_upstream_text`), and when it asks to be tried again (`parse_retry_after`).
`upstream_answers.check_status` maps the status itself to our errors."""

from __future__ import annotations

import email.utils
import ipaddress
import json
import re
from datetime import UTC, datetime
from typing import Any


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
