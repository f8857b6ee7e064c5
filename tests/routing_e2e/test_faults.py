"""Each upstream failure, through a real `--no-engine` gateway process (SPEC §4, §5).

The gateway's providers: for each fault kind, a fake OpenAI Images server answering every image
call with that fault (listed twice, once for the fallback test and once for the no-fallback
test, so the two do not share health); a healthy fake, pricier; a stalling one with long
timeouts for the overall deadline. The fakes run in this process; the gateway reaches them
over loopback TCP like any upstream.

- With a fallback (`order: [fault, healthy]`) the request succeeds through the healthy provider
  within the deadline, and its generation record lists the fault's attempt with its status.
- Without (`order: [fault], allow_fallbacks: false`) it fails with 502 `provider_unavailable` and
  `metadata.provider_errors` naming the fault (a rate limit: 503 with `Retry-After`), and no
  other provider is asked.
- 408 is the overall deadline only.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from processes.servers import Launcher
from providers.upstreams import OpenAIImagesFake

from .support import (
    PRICE_1MP,
    FakeHub,
    Gateway,
    error_of,
    provider_table,
    start_gateway,
    write_config,
)

pytestmark = pytest.mark.e2e

CONNECT_S, FIRST_BYTE_S, TOTAL_S = 1, 2, 3
DEADLINE_S = 8  # the gateway's overall deadline (PIXELROUTER_REQUEST_TIMEOUT_S)
GENERATIONS = "/v1/images/generations"

# kind: (the fake's setting, the status the gateway records for the attempt)
FAULTS: dict[str, tuple[dict[str, str], int]] = {
    "stall": ({"fault": "stall"}, 504),  # accepts, reads the request, never answers
    "headers_then_stall": ({"fault": "headers_then_stall"}, 504),
    "500": ({"fault": "500"}, 500),
    "429": ({"fault": "429"}, 429),  # Retry-After: 7
    "malformed_json": ({"fault": "malformed_json"}, 502),
    "truncated": ({"fault": "truncated"}, 502),  # Content-Length 5000, 20 bytes, close
    "reset": ({"fault": "reset"}, 502),  # RST instead of an answer
    "wrong_size": ({"image_mode": "wrong_size"}, 502),  # a 32x32 PNG for a 64x64 request
    "no_image": ({"image_mode": "no_image"}, 502),  # 200 with an empty `data`
}
KINDS = list(FAULTS)
STALLS = ("stall", "headers_then_stall")


def fallback_name(kind: str) -> str:
    return f"Fault {kind}"


def solo_name(kind: str) -> str:
    return f"Solo {kind}"


@pytest.fixture(scope="module")
def fakes(hub: FakeHub) -> dict[str, OpenAIImagesFake]:
    started: dict[str, OpenAIImagesFake] = {}
    for kind, (setting, _) in FAULTS.items():
        fake = hub.start(OpenAIImagesFake())
        for attribute, value in setting.items():
            setattr(fake, attribute, value)
        started[kind] = fake
    started["healthy"] = hub.start(OpenAIImagesFake())
    slow = started["slow"] = hub.start(OpenAIImagesFake())
    slow.fault = "stall"
    again = started["again"] = hub.start(OpenAIImagesFake())
    again.fault = "500"
    return started


@pytest.fixture(scope="module")
def gateway(launcher: Launcher, fakes: dict[str, OpenAIImagesFake]) -> Iterator[Gateway]:
    short = {"connect_s": CONNECT_S, "first_byte_s": FIRST_BYTE_S, "total_s": TOTAL_S}
    cheap = {"first_mp": 0.001, "extra_mp": 0.001}
    tables = []
    for kind in KINDS:
        url = fakes[kind].url
        names = ((f"fb-{kind}", fallback_name(kind)), (f"solo-{kind}", solo_name(kind)))
        for slug, display in names:
            tables.append(
                provider_table(
                    slug, "openai-images", url, display_name=display, price=cheap, timeouts=short
                )
            )
    tables.append(
        provider_table(
            "again-500",
            "openai-images",
            fakes["again"].url,
            display_name="Again 500",
            price=cheap,
            timeouts=short,
        )
    )
    tables.append(
        provider_table(
            "slow",
            "openai-images",
            fakes["slow"].url,
            display_name="Slow",
            price=cheap,
            timeouts={"connect_s": CONNECT_S, "first_byte_s": 60, "total_s": 60},
        )
    )
    tables.append(
        provider_table(
            "healthy",
            "openai-images",
            fakes["healthy"].url,
            display_name="Healthy",
            price={"first_mp": 0.014, "extra_mp": 0.001},
            timeouts={"connect_s": CONNECT_S, "first_byte_s": 10, "total_s": 10},
        )
    )
    config = write_config(launcher.root / "faults.toml", tables)
    yield start_gateway(launcher, config, env={"PIXELROUTER_REQUEST_TIMEOUT_S": str(DEADLINE_S)})


def generation_calls(fake: OpenAIImagesFake) -> int:
    return len(fake.calls("/images/generations"))


def only_image(response: httpx.Response) -> Any:
    data = response.json()["data"]
    assert len(data) == 1
    return Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"])))


@pytest.mark.parametrize("kind", KINDS)
def test_a_fault_falls_through_to_the_next_provider_within_the_deadline(
    gateway: Gateway, fakes: dict[str, OpenAIImagesFake], kind: str
) -> None:
    fault_calls = generation_calls(fakes[kind])
    started = time.monotonic()
    response = gateway.images({"order": [f"fb-{kind}", "healthy"]})
    elapsed = time.monotonic() - started

    assert response.status_code == 200, response.text
    assert elapsed < DEADLINE_S
    assert only_image(response).size == (64, 64)
    assert response.json()["usage"]["cost"] == pytest.approx(PRICE_1MP / 1e6)
    assert generation_calls(fakes[kind]) == fault_calls + 1  # the fault was really asked first

    record = gateway.generation(response)
    assert record["provider_name"] == "Healthy"
    assert record["total_cost"] == pytest.approx(PRICE_1MP / 1e6)  # the failed attempt: free
    attempts = record["provider_responses"]
    assert [(a["provider_name"], a["status"]) for a in attempts] == [
        (fallback_name(kind), FAULTS[kind][1]),
        ("Healthy", 200),
    ]
    if kind in STALLS:  # given up after the provider's own first-byte timeout, not sooner
        assert FIRST_BYTE_S * 1000 * 0.9 <= attempts[0]["latency"] <= (TOTAL_S + 1) * 1000


@pytest.mark.parametrize("kind", KINDS)
def test_a_fault_without_fallbacks_fails_with_the_provider_errors(
    gateway: Gateway, fakes: dict[str, OpenAIImagesFake], kind: str
) -> None:
    status = FAULTS[kind][1]
    healthy_calls = generation_calls(fakes["healthy"])
    fault_calls = generation_calls(fakes[kind])
    started = time.monotonic()
    response = gateway.images({"order": [f"solo-{kind}"], "allow_fallbacks": False})
    elapsed = time.monotonic() - started

    error = error_of(response)
    if kind == "429":
        # Every attempt was rate limited: "no provider available", with the upstream's wait.
        assert response.status_code == 503, response.text
        assert error["metadata"]["error_type"] == "provider_overloaded"
        assert response.headers["retry-after"] == "7"
    else:
        assert response.status_code == 502, response.text
        assert error["metadata"]["error_type"] == "provider_unavailable"
    provider_errors = error["metadata"]["provider_errors"]
    assert [(e["provider"], e["status"]) for e in provider_errors] == [(solo_name(kind), status)]
    assert provider_errors[0]["message"]
    assert elapsed < DEADLINE_S
    assert generation_calls(fakes[kind]) == fault_calls + 1
    assert generation_calls(fakes["healthy"]) == healthy_calls  # fallbacks off: nobody else

    record = gateway.generation(response)
    assert record["state"] == "failed" and record["total_cost"] == 0
    assert record["error"]["code"] == response.status_code
    assert [(a["provider_name"], a["status"]) for a in record["provider_responses"]] == [
        (solo_name(kind), status)
    ]


def test_without_fallbacks_an_unlisted_provider_is_never_used(
    gateway: Gateway, fakes: dict[str, OpenAIImagesFake]
) -> None:
    """A listed provider that failed recently (demoted) or whose circuit is open is not
    replaced by another provider when the client turned fallbacks off."""
    healthy_calls = generation_calls(fakes["healthy"])
    prefs = {"order": ["again-500"], "allow_fallbacks": False}
    for _ in range(3):  # K = 3 failures in a row
        response = gateway.images(prefs)
        assert response.status_code == 502, response.text
        errors = error_of(response)["metadata"]["provider_errors"]
        assert [(e["provider"], e["status"]) for e in errors] == [("Again 500", 500)]
    assert generation_calls(fakes["again"]) == 3

    response = gateway.images(prefs)  # the circuit is open now: nothing is tried
    assert response.status_code == 503, response.text
    assert "Again 500 is paused after 3 failures" in error_of(response)["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert gateway.attempts(response) == []
    assert generation_calls(fakes["again"]) == 3
    assert generation_calls(fakes["healthy"]) == healthy_calls


def test_the_overall_deadline_is_a_408(
    gateway: Gateway, fakes: dict[str, OpenAIImagesFake]
) -> None:
    """A provider slower than the whole deadline: 408 with the attempt, and no fallback is
    started after the deadline has passed."""
    healthy_calls = generation_calls(fakes["healthy"])
    started = time.monotonic()
    response = gateway.images({"order": ["slow", "healthy"]})
    elapsed = time.monotonic() - started

    assert response.status_code == 408, response.text
    error = error_of(response)
    assert error["metadata"]["error_type"] == "timeout"
    errors = error["metadata"]["provider_errors"]
    assert [(e["provider"], e["status"]) for e in errors] == [("Slow", 408)]
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + 10
    assert generation_calls(fakes["healthy"]) == healthy_calls
    assert gateway.attempts(response) == [("Slow", 408)]
