"""The circuit breaker of a real `--no-engine` gateway process (SPEC §4, docs/routing.md).

A fake pixelrouter worker ("flaky", the cheapest provider) and a healthy fake ("healthy",
pricier). The gateway runs with a 2 s cool-down (`PIXELROUTER_CIRCUIT_COOLDOWN_S`) so the test
sees the whole cycle: 3 failures in a row open the circuit; while it is open no generation
reaches flaky (its hits are counted) and work flows through healthy; after the cool-down a probe
(`GET /ready`, never a paid generation) decides: a failed probe keeps the circuit open, a passed
one lets the next generation through and the provider serves again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from e2e.support import poll
from processes.servers import Launcher
from providers.fake import Action, Reply, Seen
from providers.upstreams import OpenAIImagesFake, PixelrouterFake

from .support import FakeHub, Gateway, error_of, provider_table, start_gateway, write_config

pytestmark = pytest.mark.e2e

COOLDOWN_S = 2.0
IMAGES = "/api/v1/images"  # the worker's paid generation
PROBE = "/ready"  # the worker's readiness, what a half-open circuit probes
ONLY_FLAKY = {"only": ["flaky"]}


class FlakyWorker(PixelrouterFake):
    """A pixelrouter worker that, while `down`, answers everything (probe included) with a
    500; it logs every request with the status it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.log: list[tuple[str, str, int]] = []  # (method, path, status answered)

    def handle(self, seen: Seen) -> Action:
        if self.down:
            action: Action = Reply(500, {"error": {"message": "worker is down"}})
        else:
            action = super().handle(seen)
        assert isinstance(action, Reply)  # a worker without a fault always answers
        self.log.append((seen.method, seen.path, action.status))
        return action

    def entries(self) -> list[tuple[str, str, int]]:
        return list(self.log)

    def generations(self) -> int:
        return sum(1 for method, path, _ in self.entries() if (method, path) == ("POST", IMAGES))


@pytest.fixture(scope="module")
def flaky(hub: FakeHub) -> FlakyWorker:
    return hub.start(FlakyWorker())


@pytest.fixture(scope="module")
def healthy(hub: FakeHub) -> OpenAIImagesFake:
    return hub.start(OpenAIImagesFake())


@pytest.fixture(scope="module")
def gateway(launcher: Launcher, flaky: FlakyWorker, healthy: OpenAIImagesFake) -> Iterator[Gateway]:
    timeouts = {"connect_s": 1, "first_byte_s": 2, "total_s": 3}
    config = write_config(
        launcher.root / "circuit.toml",
        [
            provider_table(
                "flaky",
                "pixelrouter",
                flaky.url,
                display_name="Flaky",
                price={"first_mp": 0.001, "extra_mp": 0.001},
                timeouts=timeouts,
            ),
            provider_table(
                "healthy",
                "openai-images",
                healthy.url,
                display_name="Healthy",
                price={"first_mp": 0.014, "extra_mp": 0.001},
                timeouts=timeouts,
            ),
        ],
    )
    env = {"PIXELROUTER_CIRCUIT_COOLDOWN_S": str(COOLDOWN_S), "PIXELROUTER_REQUEST_TIMEOUT_S": "20"}
    yield start_gateway(launcher, config, env=env)


def _held_back(response: httpx.Response) -> bool:
    """A 503 that names flaky's open circuit, with no attempt made."""
    assert response.status_code == 503, response.text
    assert "Flaky is paused after" in error_of(response)["message"], response.text
    assert int(response.headers["retry-after"]) >= 1
    return True


def test_the_circuit_opens_after_3_failures_and_recovers_through_a_probe(
    gateway: Gateway, flaky: FlakyWorker, healthy: OpenAIImagesFake
) -> None:
    flaky.down = True

    # Three provider-caused failures in a row (500) open the circuit.
    for _ in range(3):
        response = gateway.images(ONLY_FLAKY)
        assert response.status_code == 502, response.text
        errors = error_of(response)["metadata"]["provider_errors"]
        assert [(e["provider"], e["status"]) for e in errors] == [("Flaky", 500)]
    assert flaky.generations() == 3

    # Open: a request that may use only flaky is refused without asking it ...
    response = gateway.images(ONLY_FLAKY)
    assert _held_back(response) and gateway.attempts(response) == []
    # ... and work still flows, through healthy, though flaky is 14 times cheaper.
    healthy_before = len(healthy.calls("/images/generations"))
    for _ in range(5):
        response = gateway.images()
        assert response.status_code == 200, response.text
        assert gateway.attempts(response) == [("Healthy", 200)]
    assert len(healthy.calls("/images/generations")) == healthy_before + 5
    assert flaky.generations() == 3

    # After the cool-down the next request probes flaky; the probe fails (it is still down),
    # so the circuit stays open for another cool-down and no generation is sent.
    def probed() -> bool:
        assert _held_back(gateway.images(ONLY_FLAKY))
        return any(path == PROBE for _, path, _ in flaky.entries())

    poll("a probe of the open circuit after the cool-down", probed, COOLDOWN_S + 15)
    probes = [e for e in flaky.entries() if e[1] == PROBE]
    assert probes and set(probes) == {("GET", PROBE, 500)}, probes
    assert _held_back(gateway.images(ONLY_FLAKY))
    assert flaky.generations() == 3

    # Flaky comes back. After the next cool-down a probe passes, and only then a generation.
    flaky.down = False
    mark = len(flaky.entries())

    def served() -> httpx.Response | None:
        response = gateway.images(ONLY_FLAKY)
        if response.status_code == 503:
            assert _held_back(response)
            return None
        assert response.status_code == 200, response.text
        return response

    started = time.monotonic()
    response = poll("flaky serving again", served, COOLDOWN_S + 15)
    assert time.monotonic() - started <= COOLDOWN_S + 5
    assert gateway.attempts(response) == [("Flaky", 200)]
    since: list[Any] = flaky.entries()[mark:]
    first_generation = next(i for i, e in enumerate(since) if e[:2] == ("POST", IMAGES))
    before = since[:first_generation]
    assert ("GET", PROBE, 200) in before, since  # the probe passed ...
    assert all(method == "GET" for method, _, _ in before), since  # ... before any paid call
    assert since[first_generation] == ("POST", IMAGES, 200)
    assert flaky.generations() == 4

    # Closed again: flaky takes work as any provider does.
    for _ in range(3):
        response = gateway.images(ONLY_FLAKY)
        assert response.status_code == 200, response.text
        assert gateway.attempts(response) == [("Flaky", 200)]
    assert flaky.generations() == 7
    assert sum(1 for e in flaky.entries()[mark:] if e[1] == PROBE) == 1  # no probe when closed
