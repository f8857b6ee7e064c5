"""The circuit breaker: it opens after K provider-caused failures in a row, keeps generations
away during the cool-down, and a cheap probe (never a generation) decides when it closes."""

from __future__ import annotations

import asyncio

import pytest

from pixelrouter.errors import ProviderError, RoutingFailed
from pixelrouter.providers.base import ProviderStatus
from pixelrouter.routing.health import CircuitState, HealthConfig, HealthRegistry

from .standins import FakeClock, StandIn, make_router, request


def test_the_circuit_opens_after_k_failures_and_half_opens_after_the_cool_down() -> None:
    clock = FakeClock()
    health = HealthRegistry(HealthConfig(failure_threshold=3, cooldown_s=30), clock=clock).of("a")
    health.record_failure(502, "bad gateway")
    health.record_failure(502, "bad gateway")
    assert health.state() is CircuitState.CLOSED and health.accepts_work()
    health.record_failure(502, "bad gateway")
    assert health.state() is CircuitState.OPEN and not health.accepts_work()
    clock.advance(29.9)
    assert health.state() is CircuitState.OPEN
    clock.advance(0.1)
    assert health.state() is CircuitState.HALF_OPEN and health.probe_due()
    assert not health.accepts_work()  # only a probe may close it

    health.record_probe(False)  # another full cool-down
    assert health.state() is CircuitState.OPEN
    clock.advance(30)
    health.record_probe(True)
    assert health.state() is CircuitState.CLOSED and health.accepts_work()
    health.record_failure(502, "bad gateway")  # a probe is no proof: one failure reopens
    assert health.state() is CircuitState.OPEN
    clock.advance(30)
    health.record_probe(True)
    health.record_success(seconds=1.0, images=1, image_tokens=4096)
    health.record_failure(502, "bad gateway")  # a real success reset the count
    assert health.state() is CircuitState.CLOSED


def test_a_success_resets_the_count_and_rate_limits_do_not_open_the_circuit() -> None:
    health = HealthRegistry(clock=FakeClock()).of("a")
    for _ in range(2):
        health.record_failure(500, "boom")
    health.record_success(seconds=0.5, images=1, image_tokens=4096)
    for _ in range(2):
        health.record_failure(500, "boom")
    assert health.state() is CircuitState.CLOSED
    for _ in range(10):
        health.record_failure(429, "slow down")
    assert health.state() is CircuitState.CLOSED and health.rate_limited == 10

    limited = HealthRegistry(clock=FakeClock()).of("b")
    limited.record_failure(429, "slow down")
    assert limited.failed_recently()  # routing steps around it for a while
    assert not limited.failed_recently(rate_limits=False)  # but it was not down


async def test_an_open_circuit_gets_no_generation_until_its_probe_passes() -> None:
    clock = FakeClock()
    events: list[str] = []

    class Flaky(StandIn):
        async def generate(self, req, on_progress=None):  # type: ignore[no-untyped-def]
            events.append("generate")
            return await super().generate(req, on_progress)

        async def probe(self) -> bool:
            events.append("probe")
            return await super().probe()

    flaky = Flaky("flaky", 1_000, outcomes=[ProviderError("bad gateway")] * 3)
    spare = StandIn("spare", 9_000)
    router = make_router([flaky, spare], clock=clock)
    for attempt in range(3):
        if attempt:
            clock.advance(31)  # past the recent-failure window, so flaky is first again
        result = await router.route(request(sort="price"))
        assert result.provider_slug == "spare"
    assert router.health.of("flaky").state() is CircuitState.OPEN
    assert flaky.calls == 3

    for _ in range(5):  # the cool-down: not one generation reaches it
        await router.route(request(order=("flaky",)))
        clock.advance(5)
    assert flaky.calls == 3 and flaky.probes == 0

    clock.advance(5)  # 30 s after it opened: half-open, probed before any generation
    flaky.probe_ok = False
    await router.route(request(order=("flaky",)))
    assert flaky.probes == 1 and flaky.calls == 3
    assert router.health.of("flaky").state() is CircuitState.OPEN

    clock.advance(30)
    flaky.probe_ok = True
    events.clear()
    result = await router.route(request(order=("flaky",)))
    assert events == ["probe", "generate"]
    assert result.provider_slug == "flaky" and flaky.probes == 2
    assert router.health.of("flaky").state() is CircuitState.CLOSED
    assert router.stats()["flaky"]["circuit"] == "closed"


async def test_a_lone_provider_behind_an_open_circuit_is_a_503_naming_it() -> None:
    clock = FakeClock()
    lone = StandIn("lone").fail_always(ProviderError("upstream answered HTTP 500", status=500))
    router = make_router([lone], clock=clock)
    for _ in range(3):
        with pytest.raises(RoutingFailed):
            await router.route(request())
    clock.advance(12)
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request())
    assert lone.calls == 3 and caught.value.attempts == []
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "18"
    assert "Stand-in lone" in caught.value.message and "HTTP 500" in caught.value.message


async def test_concurrent_requests_share_one_probe_and_a_hung_probe_is_bounded() -> None:
    clock = FakeClock()
    release = asyncio.Event()
    entered = asyncio.Event()

    class Hung(StandIn):
        async def probe(self) -> bool:
            self.probes += 1
            entered.set()
            await release.wait()
            return True

    hung = Hung("hung", 1_000)
    spare = StandIn("spare", 9_000)
    router = make_router([hung, spare], clock=clock, probe_timeout_s=0.05)
    for _ in range(3):
        router.health.of("hung").record_failure(502, "bad gateway")
    clock.advance(30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(router.route(request(sort="price")) for _ in range(4)))
    assert loop.time() - started < 1.0
    assert [r.provider_slug for r in results] == ["spare"] * 4
    assert hung.probes == 1 and hung.calls == 0
    assert router.health.of("hung").state() is CircuitState.OPEN  # a timed-out probe failed
    release.set()


async def test_status_is_refreshed_at_most_once_a_second_per_provider() -> None:
    clock = FakeClock()

    class Worker(StandIn):
        polls = 0

        async def refresh_status(self) -> ProviderStatus:
            self.polls += 1
            self.live = {"queue_full": True}
            return self.status()

    worker, spare = Worker("worker", 1_000), StandIn("spare", 9_000)
    router = make_router([worker, spare], clock=clock)
    first = await router.route(request())
    assert first.provider_slug == "spare" and worker.polls == 1  # it polled, then saw it full
    await router.route(request())
    assert worker.polls == 1
    clock.advance(1)
    worker.live = {}
    await router.route(request())
    assert worker.polls == 2


def test_not_ready_while_every_providers_circuit_is_open() -> None:
    clock = FakeClock()
    a, b = StandIn("a"), StandIn("b")
    router = make_router([a, b], clock=clock, config=HealthConfig(failure_threshold=2))
    assert router.ready()[0]
    for slug in ("a", "b"):
        for _ in range(2):
            router.health.of(slug).record_failure(502, "bad gateway")
    ready, reason = router.ready()
    assert not ready
    assert "Stand-in a: paused after 2 failures in a row (last: bad gateway)" in reason
    clock.advance(30)  # half-open: a probe may close it, so the gateway may take work again
    assert router.ready()[0]
