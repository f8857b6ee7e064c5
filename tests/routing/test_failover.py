"""`Router.route`: what falls through to the next provider, what does not, the deadline, and
the attempts recorded on the generation."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from pixelrouter.errors import (
    InvalidRequest,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RoutingFailed,
)
from pixelrouter.types import ImageResult

from .standins import OTHER_MODEL, FakeClock, StandIn, make_router, never, request


def statuses(attempts: list) -> list[tuple[str, int]]:
    return [(a.provider_name, a.status) for a in attempts]


class BuggyUpstream(StandIn):
    async def generate(self, request, on_progress=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        raise RuntimeError("a bug in the provider's code")


class EmptyUpstream(StandIn):
    async def generate(self, request, on_progress=None):  # type: ignore[no-untyped-def]
        result: ImageResult = await super().generate(request, on_progress)
        return dataclasses.replace(result, images=())


async def own_timeout() -> None:
    raise TimeoutError  # e.g. the provider's own first-byte timeout


async def test_every_provider_caused_failure_falls_through_and_is_recorded() -> None:
    providers = [
        StandIn("s5xx", 1_000, outcomes=[ProviderError("upstream answered HTTP 500", status=500)]),
        StandIn("s429", 2_000, outcomes=[ProviderError("slow down", status=429)]),
        StandIn("stimeout", 3_000, outcomes=[own_timeout]),
        BuggyUpstream("sbug", 4_000),
        EmptyUpstream("sempty", 5_000),
        StandIn("sok", 6_000),
    ]
    router = make_router(providers)
    result = await router.route(request(sort="price"))
    assert result.provider_name == "Stand-in sok" and result.provider_slug == "sok"
    assert statuses(result.attempts) == [
        ("Stand-in s5xx", 500),
        ("Stand-in s429", 429),
        ("Stand-in stimeout", 504),
        ("Stand-in sbug", 500),
        ("Stand-in sempty", 502),
        ("Stand-in sok", 200),
    ]
    assert "internal error in the provider (id " in (result.attempts[3].error or "")
    stats = router.stats()
    assert stats["s5xx"]["failures"] == 1 and stats["s429"]["rate_limited"] == 1
    assert stats["sok"]["successes"] == 1 and stats["sok"]["latency_s_per_image"] is not None


async def test_a_client_error_is_not_retried_elsewhere() -> None:
    refuses = StandIn("refuses", 1_000, outcomes=[InvalidRequest("the prompt was refused")])
    other = StandIn("other", 2_000)
    router = make_router([refuses, other])
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(sort="price"))
    assert isinstance(caught.value.cause, InvalidRequest) and caught.value.status == 400
    assert statuses(caught.value.attempts) == [("Stand-in refuses", 400)]
    assert other.calls == 0
    assert router.stats()["refuses"]["client_errors"] == 1
    assert router.health.of("refuses").failed_recently() is False


async def test_a_rate_limit_from_a_provider_is_not_the_clients_fault() -> None:
    limited = StandIn("limited", 1_000, outcomes=[RateLimited("busy", retry_after_s=5)])
    router = make_router([limited, StandIn("other", 2_000)])
    result = await router.route(request(sort="price"))
    assert statuses(result.attempts) == [("Stand-in limited", 429), ("Stand-in other", 200)]
    assert router.health.of("limited").retry_after_remaining() == 5


async def test_all_failing_is_a_502_with_every_provider_error() -> None:
    a = StandIn("a", 1_000).fail_always(ProviderError("upstream answered HTTP 500", status=500))
    b = StandIn("b", 2_000).fail_always(ProviderUnavailable("loading"))
    router = make_router([a, b])
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(sort="price"))
    assert caught.value.status == 502
    errors = caught.value.metadata["provider_errors"]
    assert [(e["provider"], e["status"]) for e in errors] == [
        ("Stand-in a", 500),
        ("Stand-in b", 503),
    ]


async def test_only_unavailable_or_rate_limited_providers_is_a_503() -> None:
    a = StandIn("a", 1_000).fail_always(ProviderUnavailable("the engine is loading"))
    b = StandIn("b", 2_000).fail_always(ProviderError("slow down", status=429, retry_after_s=3))
    router = make_router([a, b])
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(sort="price"))
    assert caught.value.status == 503 and caught.value.headers["Retry-After"] == "3"
    assert caught.value.message == "slow down"


async def test_no_provider_for_the_preferences_is_a_404_without_attempts() -> None:
    # OpenRouter's "no endpoints found": a 4xx, which no SDK retries (they retry 5xx).
    router = make_router([StandIn("a")])
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(only=("nobody",)))
    assert caught.value.status == 404 and caught.value.attempts == []
    assert caught.value.error_type == "not_found"
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(order=("nobody",), allow_fallbacks=False))
    assert caught.value.status == 404
    # A model no provider serves at all is the server's gap, not the request's: 503.
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(model="example/unserved"))
    assert caught.value.status == 503


async def test_allow_fallbacks_false_makes_one_attempt() -> None:
    a = StandIn("a", 1_000).fail_always(ProviderError("bad gateway"))
    b = StandIn("b", 2_000)
    router = make_router([a, b])
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(order=("a",), allow_fallbacks=False))
    assert caught.value.status == 502 and len(caught.value.attempts) == 1
    assert b.calls == 0


async def test_model_fallbacks_after_every_provider_of_the_model_failed() -> None:
    klein_a = StandIn("klein-a", 1_000).fail_always(ProviderError("bad gateway"))
    klein_b = StandIn("klein-b", 2_000).fail_always(ProviderError("bad gateway"))
    other = StandIn("other", 3_000, models=(OTHER_MODEL,))
    router = make_router([klein_a, klein_b, other])
    result = await router.route(request(fallback_models=(OTHER_MODEL,)))
    assert result.model == OTHER_MODEL and other.requests[0].model == OTHER_MODEL
    assert sorted(statuses(result.attempts)[:2]) == [
        ("Stand-in klein-a", 502),
        ("Stand-in klein-b", 502),
    ]
    assert statuses(result.attempts)[2] == ("Stand-in other", 200)


async def test_the_overall_deadline_is_a_408() -> None:
    slow = StandIn("slow", 1_000, outcomes=[never])
    spare = StandIn("spare", 2_000)
    router = make_router([slow, spare], deadline_s=0.05)
    with pytest.raises(RoutingFailed) as caught:
        await router.route(request(sort="price"))
    assert caught.value.status == 408 and caught.value.error_type == "timeout"
    assert statuses(caught.value.attempts) == [("Stand-in slow", 408)]
    assert spare.calls == 0


async def test_an_attempt_timeout_moves_on_to_the_next_provider() -> None:
    slow = StandIn("slow", 1_000, outcomes=[never])
    spare = StandIn("spare", 2_000)
    router = make_router([slow, spare], deadline_s=30, attempt_timeout_s=0.05)
    result = await router.route(request(sort="price"))
    assert statuses(result.attempts) == [("Stand-in slow", 504), ("Stand-in spare", 200)]


async def test_a_retry_after_is_honoured_until_it_passed() -> None:
    clock = FakeClock()
    limited = StandIn("limited", 1_000)
    limited.outcomes = [ProviderError("slow down", status=429, retry_after_s=20)]
    router = make_router([limited], clock=clock)
    with pytest.raises(RoutingFailed) as first:
        await router.route(request())
    assert first.value.status == 503 and limited.calls == 1
    clock.advance(5)
    with pytest.raises(RoutingFailed) as held:
        await router.route(request())
    assert held.value.status == 503 and held.value.attempts == []
    assert held.value.headers["Retry-After"] == "15"
    assert "Stand-in limited" in held.value.message and limited.calls == 1
    clock.advance(15)
    result = await router.route(request())
    assert result.provider_slug == "limited" and limited.calls == 2


async def test_cancellation_is_not_a_provider_failure() -> None:
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    slow = StandIn("slow", outcomes=[hang])
    router = make_router([slow, StandIn("spare", 50_000)])
    task = asyncio.create_task(router.route(request(sort="price")))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.stats()["slow"]["failures"] == 0
