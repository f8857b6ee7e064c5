"""Reading an upstream's JSON answer without parsing the megabytes of base64 inside it.

An image answer is a few hundred bytes of JSON around one long string per image (`b64_json`,
or a `data:image/png;base64,` URL). Parsing it whole costs about 0.65 ms per megabyte here;
most of that is checking and copying the base64 text character by character. `loads` lifts
every long string without escapes out of the body first (finding quotes is `memchr`, several
GB/s), parses the small skeleton left behind, and puts the strings back as Python `str`s:
the same value `orjson.loads` gives, for about a third of the time (docs/performance.md).

Strings are found by walking the body's quotes in order, skipping escaped ones: outside a
string, valid JSON has no quote, so the quotes pair up into exactly its strings. A string is
lifted only when it is at least `lift_min` bytes long and has no backslash (so its JSON text is
its value). The one thing not checked is that a lifted string holds no raw control character,
which strict JSON refuses: it stays in the text, where it is one more stray character in what
should be base64 (`HTTPProvider.decode_b64` drops whitespace; a pass-through PNG is checked by
its header and trailer, as before). Otherwise malformed JSON stays malformed: anything
unexpected falls back to parsing the whole body, so the error is orjson's.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

LIFT_MIN = 64 * 1024  # shorter strings are cheap to parse in place
# The walk is Python, one step per quote: a body that needs more (many strings, many escaped
# quotes, long runs of backslashes) is parsed whole by orjson, in C, instead.
MAX_STEPS = 10_000
MAX_BACKSLASH_RUN = 64
_BACKSLASH = 0x5C
# Stands in for a lifted string in the skeleton; random per process, so no upstream can send it.
_MARK = f"\x01splice-{secrets.token_hex(8)}:"
_MARK_JSON = orjson.dumps(_MARK)[1:-1]


def loads(body: bytes, *, lift_min: int = LIFT_MIN) -> Any:
    """`orjson.loads(body)`, lifting long strings out first (see the module docstring).
    Raises `orjson.JSONDecodeError` for malformed JSON, as `orjson.loads` does."""
    lifted = _lift(body, lift_min) if len(body) >= lift_min else None
    if lifted is None:
        return orjson.loads(body)
    skeleton, strings = lifted
    return _restore(orjson.loads(skeleton), strings)


def _lift(body: bytes, lift_min: int) -> tuple[bytes, list[str]] | None:
    """The body with each long string replaced by a mark, and the strings; None when there is
    nothing to lift or the body is not what valid JSON looks like."""
    find = body.find
    pieces: list[bytes] = []
    strings: list[str] = []
    copied = 0  # body[:copied] is in pieces
    pos = 0
    steps = 0
    while True:
        start = find(b'"', pos)
        if start < 0:
            break
        end = find(b'"', start + 1)
        while end > 0 and body[end - 1] == _BACKSLASH:
            # Escaped unless the backslashes before it pair up (`\\"` ends the string).
            run = 1
            while body[end - 1 - run] == _BACKSLASH:  # stops at the opening quote at the latest
                run += 1
                if run > MAX_BACKSLASH_RUN:
                    return None
            if run % 2 == 0:
                break
            steps += 1
            if steps > MAX_STEPS:
                return None
            end = find(b'"', end + 1)
        if end < 0:
            return None  # unterminated: orjson says what is wrong
        if end - start - 1 >= lift_min and find(b"\\", start + 1, end) < 0:
            try:
                strings.append(body[start + 1 : end].decode())
            except UnicodeDecodeError:
                return None
            pieces.append(body[copied : start + 1])
            pieces.append(_MARK_JSON + str(len(strings) - 1).encode())
            copied = end
        pos = end + 1
        steps += 1
        if steps > MAX_STEPS:
            return None
    if not strings:
        return None
    pieces.append(body[copied:])
    return b"".join(pieces), strings


def _restore(payload: Any, strings: list[str]) -> Any:
    """Put the lifted strings back where their marks are (values and keys), without recursion:
    JSON may nest deeper than Python's recursion limit."""

    def value(item: Any) -> Any:
        if isinstance(item, str) and item.startswith(_MARK):
            return strings[int(item[len(_MARK) :])]
        return item

    if not isinstance(payload, dict | list):
        return value(payload)
    stack: list[dict[str, Any] | list[Any]] = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(key.startswith(_MARK) for key in node):
                items = [(value(key), item) for key, item in node.items()]
                node.clear()
                node.update(items)
            entries: Any = node.items()
        else:
            entries = enumerate(node)
        for where, item in list(entries):
            if isinstance(item, dict | list):
                stack.append(item)
            elif isinstance(item, str):
                node[where] = value(item)  # type: ignore[index]
    return payload
