"""API key material: generation, hashing, labels and reset periods.

Pure functions, no database. A plaintext key is only ever returned to its creator once; callers
store `hash_key(plaintext)` and show `key_label(plaintext)`. Never log a plaintext key.

No plaintext is ever compared: a presented key is hashed and looked up by its SHA-256 (the
management key too). What a lookup's timing could reveal is how much of a *hash* matches, and a
256-bit random key's hash gives nothing to work towards another key (SPEC §7's constant-time
rule, met by never comparing secrets at all).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Literal

KEY_PREFIX = "sk-pr-v1-"
KEY_HEX_CHARS = 64
KeyKind = Literal["inference", "management"]
LimitReset = Literal["daily", "weekly", "monthly"]
KEY_KINDS: tuple[str, ...] = ("inference", "management")
LIMIT_RESETS: tuple[str, ...] = ("daily", "weekly", "monthly")

_KEY_RE = re.compile(rf"{re.escape(KEY_PREFIX)}[0-9a-f]{{{KEY_HEX_CHARS}}}")
_HASH_RE = re.compile(r"[0-9a-f]{64}")


def generate_key() -> str:
    """A new random key: `sk-pr-v1-` and 64 lowercase hex digits (256 bits from `secrets`)."""
    return KEY_PREFIX + secrets.token_hex(KEY_HEX_CHARS // 2)


def hash_key(plaintext: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def looks_like_key(text: str) -> bool:
    """Whether `text` has the exact shape of a pixelrouter key (not whether the key exists)."""
    return _KEY_RE.fullmatch(text) is not None


def looks_like_key_hash(text: str) -> bool:
    """Whether `text` has the shape of `hash_key`'s output (64 lowercase hex digits)."""
    return _HASH_RE.fullmatch(text) is not None


def key_label(plaintext: str) -> str:
    """The displayable label, `sk-pr-v1-abc...f09`: prefix, first and last 3 hex digits."""
    if not looks_like_key(plaintext):
        raise ValueError("not a pixelrouter key (expected sk-pr-v1- and 64 lowercase hex digits)")
    secret = plaintext[len(KEY_PREFIX) :]
    return f"{KEY_PREFIX}{secret[:3]}...{secret[-3:]}"


def period_start(reset: LimitReset | str, now: datetime) -> datetime:
    """Start of the limit period holding `now`: 00:00 UTC of the day, the Monday, the 1st."""
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "daily":
        return day
    if reset == "weekly":
        return day - timedelta(days=day.weekday())
    if reset == "monthly":
        return day.replace(day=1)
    raise ValueError(f"unknown limit_reset {reset!r}; expected one of {', '.join(LIMIT_RESETS)}")


def period_end(reset: LimitReset | str, now: datetime) -> datetime:
    """End (exclusive) of the limit period holding `now`: the next reset instant."""
    start = period_start(reset, now)
    if reset == "daily":
        return start + timedelta(days=1)
    if reset == "weekly":
        return start + timedelta(days=7)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
