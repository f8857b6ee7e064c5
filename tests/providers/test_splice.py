"""`splice.loads` gives what `orjson.loads` gives, for any JSON and any malformed body."""

from __future__ import annotations

import base64
import os

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelrouter.providers import splice

LIFT = 16  # small, so generated documents have strings on both sides of the limit

texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.text(
    alphabet='ab"\\\n/é\x00', min_size=LIFT - 2, max_size=LIFT + 30
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(documents)
def test_same_value_as_orjson(document: object) -> None:
    body = orjson.dumps(document)
    assert splice.loads(body, lift_min=LIFT) == orjson.loads(body)


@settings(max_examples=400, deadline=None)
@given(documents, st.data())
def test_malformed_bodies_fail_as_orjson_does(document: object, data: st.DataObject) -> None:
    body = orjson.dumps(document)
    if len(body) < 2:
        return
    cut = data.draw(st.integers(1, len(body) - 1))
    broken = data.draw(
        st.sampled_from([body[:cut], body[:cut] + b'"' + body[cut:], body[:cut] + b"}"])
    )
    try:
        expected = orjson.loads(broken)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            splice.loads(broken, lift_min=LIFT)
    else:
        assert splice.loads(broken, lift_min=LIFT) == expected


def test_an_image_answer_keeps_its_base64_and_its_escaped_neighbours() -> None:
    b64 = base64.b64encode(os.urandom(200_000)).decode()
    answer = {
        "created": 1,
        "data": [
            {"b64_json": b64, "revised_prompt": 'a "quoted" \\ prompt'},
            {"url": f"data:image/png;base64,{b64}"},
        ],
        "usage": {"input_tokens": 3},
    }
    body = orjson.dumps(answer)
    assert splice._lift(body, splice.LIFT_MIN) is not None  # the long strings were lifted
    assert splice.loads(body) == answer


def test_long_keys_and_deep_nesting() -> None:
    long_key = "k" * 100
    # Nested deeper than a recursive walk could go within Python's default limit.
    body = b'{"%s": "%s", "deep": %s"%s"%s}' % (
        long_key.encode(),
        b"x" * 100,
        b"[" * 1020,
        b"v" * 100,
        b"]" * 1020,
    )
    document = splice.loads(body, lift_min=50)
    assert document[long_key] == "x" * 100
    deep = document["deep"]
    for _ in range(1020):
        assert isinstance(deep, list) and len(deep) == 1
        deep = deep[0]
    assert deep == "v" * 100


def test_long_strings_with_escapes_or_bad_utf8_are_left_to_orjson() -> None:
    escaped = orjson.dumps({"a": "x" * 100 + "\n" + "y" * 100})
    assert splice.loads(escaped, lift_min=50) == orjson.loads(escaped)
    bad = b'{"a": "' + b"\xff" * 100 + b'"}'
    with pytest.raises(orjson.JSONDecodeError):
        splice.loads(bad, lift_min=50)


def test_a_forged_mark_is_just_text() -> None:
    forged = {"a": "\x01splice-0000000000000000:0", "b": "z" * 100}
    body = orjson.dumps(forged)
    assert splice.loads(body, lift_min=50) == forged


def test_bodies_the_walk_would_be_slow_on_are_parsed_whole() -> None:
    # Each escaped quote, each string and each backslash in a run is a Python step: past a
    # bound the body goes to orjson whole, so no upstream can make the walk take seconds.
    big = "b" * 100
    many_escaped_quotes = orjson.dumps({"a": '"' * (splice.MAX_STEPS + 5), "b": big})
    many_strings = orjson.dumps({"a": ["x"] * (splice.MAX_STEPS + 5), "b": big})
    long_backslash_run = orjson.dumps({"a": "\\" * (splice.MAX_BACKSLASH_RUN + 5), "b": big})
    for body in (many_escaped_quotes, many_strings, long_backslash_run):
        assert splice._lift(body, 50) is None
        assert splice.loads(body, lift_min=50) == orjson.loads(body)
    # Within the bounds, the same shapes are walked and the long string is lifted.
    few = orjson.dumps({"a": '"' * 10, "s": ["x"] * 10, "c": "\\" * 10, "b": big})
    assert splice._lift(few, 50) is not None
    assert splice.loads(few, lift_min=50) == orjson.loads(few)
