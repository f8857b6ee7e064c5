"""Logging that never carries an API key (SPEC §7), even one a client put in a URL."""

from __future__ import annotations

import logging
import re

# Anything shaped like a key, valid or not: a client's typo must not leak the rest of it.
KEY_LIKE = re.compile(r"sk-pr-v1-[0-9A-Za-z]+")
REDACTED = "sk-pr-v1-[redacted]"
GUARDED_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn", "pixelrouter", "httpx")


def _masked(value: object) -> object:
    if isinstance(value, str) and "sk-pr-v1-" in value:
        return KEY_LIKE.sub(REDACTED, value)
    return value


class RedactKeys(logging.Filter):
    """Rewrites a record whose message holds something key-shaped. The format and the
    arguments stay apart, each masked: formatters such as uvicorn's access formatter read the
    arguments themselves (its status code is a `%d`), so they must keep their types."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        if "sk-pr-v1-" in message:
            record.msg = _masked(record.msg)
            if isinstance(record.args, tuple):
                record.args = tuple(_masked(arg) for arg in record.args)
            elif isinstance(record.args, dict):
                record.args = {name: _masked(arg) for name, arg in record.args.items()}
            if KEY_LIKE.search(record.getMessage()):  # a key inside some other argument type
                record.msg = KEY_LIKE.sub(REDACTED, record.getMessage())
                record.args = None
        if record.exc_info and not record.exc_text:
            # Formatted once here, so a key inside an exception's text is masked too.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "sk-pr-v1-" in record.exc_text:
            record.exc_text = KEY_LIKE.sub(REDACTED, record.exc_text)
        return True


def guard_logs() -> None:
    """Install the filter on the loggers that see request lines and on the root's handlers
    (idempotent; call it again after a framework reconfigures logging)."""
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in GUARDED_LOGGERS]
    for name in GUARDED_LOGGERS:
        targets.extend(logging.getLogger(name).handlers)
    targets.extend(logging.getLogger().handlers)
    for target in targets:
        if not any(isinstance(f, RedactKeys) for f in target.filters):
            target.addFilter(RedactKeys())
