"""SPEC §4 selection, as `Router.plan` computes it: filters, order, sort, the weighted default,
queue awareness and the recent-failure window. No generation runs here."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from .standins import MODEL, OTHER_MODEL, FakeClock, StandIn, make_router, request, slugs

SEED_PARAMS = ("seed", "n", "steps", "guidance")


def test_only_and_ignore_filter_by_slug() -> None:
    a, b, c = StandIn("a"), StandIn("b", 20_000), StandIn("c", 30_000)
    router = make_router([a, b, c])
    assert set(slugs(router.plan(request(only=("a", "c")), MODEL))) == {"a", "c"}
    assert set(slugs(router.plan(request(ignore=("a",)), MODEL))) == {"b", "c"}
    assert router.plan(request(only=("nobody",)), MODEL) == []


def test_order_puts_the_listed_first_then_the_rest_by_price() -> None:
    cheap, mid, dear = StandIn("cheap", 5_000), StandIn("mid", 10_000), StandIn("dear", 20_000)
    router = make_router([dear, cheap, mid])
    plan = router.plan(request(order=("dear", "mid")), MODEL)
    assert slugs(plan) == ["dear", "mid", "cheap"]
    one = router.plan(request(order=("dear", "mid"), allow_fallbacks=False), MODEL)
    assert slugs(one) == ["dear"]


def test_sort_by_price_throughput_and_latency_from_live_stats() -> None:
    cheap, mid, dear, new = (
        StandIn("cheap", 5_000),
        StandIn("mid", 10_000),
        StandIn("dear", 20_000),
        StandIn("new", 1_000),  # no stats yet: after every measured provider
    )
    router = make_router([dear, new, mid, cheap])
    # seconds per image: cheap 4 s, mid 1 s, dear 2 s
    for provider, seconds in ((cheap, 4.0), (mid, 1.0), (dear, 2.0)):
        router.health.of(provider.info.slug).record_success(
            seconds=seconds, images=1, image_tokens=4096
        )
    assert slugs(router.plan(request(sort="price"), MODEL)) == ["new", "cheap", "mid", "dear"]
    assert slugs(router.plan(request(sort="latency"), MODEL)) == ["mid", "dear", "cheap", "new"]
    assert slugs(router.plan(request(sort="throughput"), MODEL)) == [
        "mid",
        "dear",
        "cheap",
        "new",
    ]


def test_max_price_per_image_and_per_request() -> None:
    cheap, dear = StandIn("cheap", 10_000), StandIn("dear", 20_000)
    router = make_router([cheap, dear])
    assert slugs(router.plan(request(max_price_image_micro=15_000), MODEL)) == ["cheap"]
    assert slugs(router.plan(request(max_price_request_micro=30_000, n=2), MODEL)) == ["cheap"]
    assert router.plan(request(max_price_request_micro=15_000, n=2), MODEL) == []
    # At 2 MP an image costs first_mp + extra_mp: 11 000 for the cheap one.
    big = request(max_price_image_micro=10_500, width=2048, height=1024)
    assert router.plan(big, MODEL) == []


def test_data_collection_deny_keeps_only_providers_that_deny() -> None:
    keeps, collects = StandIn("keeps"), StandIn("collects", data_collection="allow")
    router = make_router([keeps, collects])
    assert slugs(router.plan(request(data_collection="deny"), MODEL)) == ["keeps"]
    assert set(slugs(router.plan(request(data_collection="allow"), MODEL))) == {
        "keeps",
        "collects",
    }


def test_require_parameters_drops_providers_that_do_not_declare_a_used_parameter() -> None:
    full = StandIn("full", supported_parameters=SEED_PARAMS)
    seedless = StandIn("seedless", 5_000, supported_parameters=("n", "steps"))
    undeclared = StandIn("undeclared", 7_000)  # declares nothing: not filtered
    router = make_router([full, seedless, undeclared])
    seeded = request(seed=3, seed_given=True, require_parameters=True)
    assert set(slugs(router.plan(seeded, MODEL))) == {"full", "undeclared"}
    loose = request(seed=3, seed_given=True)
    assert set(slugs(router.plan(loose, MODEL))) == {"full", "seedless", "undeclared"}
    unseeded = request(require_parameters=True)
    assert len(router.plan(unseeded, MODEL)) == 3


def test_a_provider_that_cannot_express_the_request_is_never_planned() -> None:
    class NoSteps(StandIn):
        def supports(self, req):  # type: ignore[no-untyped-def]
            return req.steps is None  # e.g. an API without a steps parameter

    picky, plain = NoSteps("picky", 1_000), StandIn("plain", 50_000)
    router = make_router([picky, plain])
    assert slugs(router.plan(request(steps=8), MODEL)) == ["plain"]
    assert slugs(router.plan(request(sort="price"), MODEL)) == ["picky", "plain"]
    # provider.options.<slug> is applied before asking: picky's own steps make it unable.
    options = (("picky", (("steps", 8),)),)
    assert slugs(router.plan(request(options=options), MODEL)) == ["plain"]


def test_the_first_choice_follows_one_over_price_squared() -> None:
    prices = {"a": 10_000, "b": 14_000, "c": 20_000}
    router = make_router([StandIn(s, p) for s, p in prices.items()], seed=2024)
    plans = 20_000
    firsts = Counter(router.plan(request(), MODEL)[0].info.slug for _ in range(plans))
    weights = {s: 1 / p**2 for s, p in prices.items()}
    total = sum(weights.values())
    expected = {s: plans * w / total for s, w in weights.items()}  # 56.8%, 29.0%, 14.2%
    chi_square = sum((firsts[s] - expected[s]) ** 2 / expected[s] for s in prices)
    assert chi_square < 13.8, (firsts, expected)  # p = 0.001 with 2 degrees of freedom
    for s in prices:
        assert abs(firsts[s] / plans - expected[s] / plans) < 0.02
    # The others follow as fallbacks in price order.
    plan = slugs(router.plan(request(), MODEL))
    assert [s for s in plan[1:]] == sorted(plan[1:], key=prices.__getitem__)


def test_equal_prices_prefer_the_shortest_estimated_wait() -> None:
    busy = StandIn("busy", live={"estimated_wait_s": 8.0})
    idle = StandIn("idle", live={"estimated_wait_s": 0.5})
    router = make_router([busy, idle])
    firsts = Counter(router.plan(request(), MODEL)[0].info.slug for _ in range(200))
    assert firsts == {"idle": 200}
    # Equal waits: the draw shares the work.
    twin_a, twin_b = StandIn("twin-a"), StandIn("twin-b")
    router = make_router([twin_a, twin_b])
    firsts = Counter(router.plan(request(), MODEL)[0].info.slug for _ in range(400))
    assert 150 < firsts["twin-a"] < 250


def test_a_full_queue_is_skipped_while_another_provider_is_free() -> None:
    full = StandIn("full", 1_000, live={"queue_full": True, "queue_depth": 64})
    free = StandIn("free", 90_000)
    router = make_router([full, free])
    for prefs in ({}, {"sort": "price"}, {"order": ("full", "free")}):
        assert slugs(router.plan(request(**prefs), MODEL)) == ["free", "full"], prefs
    alone = make_router([full])
    assert slugs(alone.plan(request(), MODEL)) == ["full"]  # the only one: still used


def test_a_recent_failure_drops_a_provider_for_30_s_unless_it_is_the_last_resort() -> None:
    clock = FakeClock()
    cheap, dear = StandIn("cheap", 1_000), StandIn("dear", 100_000)
    router = make_router([cheap, dear], clock=clock)
    router.health.of("cheap").record_failure(502, "upstream answered HTTP 502")
    clock.advance(29)
    for _ in range(50):
        assert slugs(router.plan(request(), MODEL)) == ["dear", "cheap"]
    router.health.of("dear").record_failure(500, "upstream answered HTTP 500")
    # Both failed recently: kept as a last resort, in price order.
    assert slugs(router.plan(request(), MODEL)) == ["cheap", "dear"]
    clock.advance(1.5)  # cheap's failure is 30.5 s old now
    assert slugs(router.plan(request(), MODEL)) == ["cheap", "dear"]
    assert router.health.of("cheap").failed_recently() is False


def test_model_fallbacks_are_planned_per_model() -> None:
    klein, other = StandIn("klein"), StandIn("other", models=(OTHER_MODEL,))
    router = make_router([klein, other])
    req = request(fallback_models=(OTHER_MODEL,))
    assert slugs(router.plan(req, MODEL)) == ["klein"]
    assert slugs(router.plan(req, OTHER_MODEL)) == ["other"]
    assert router.serves(OTHER_MODEL) == [other]


def test_an_open_circuit_or_a_pending_retry_after_is_never_planned() -> None:
    clock = FakeClock()
    a, b = StandIn("a"), StandIn("b")
    router = make_router([a, b], clock=clock)
    for _ in range(3):
        router.health.of("a").record_failure(502, "bad gateway")
    router.health.of("b").record_failure(429, "slow down", retry_after_s=10)
    assert router.plan(request(), MODEL) == []
    clock.advance(10)
    assert slugs(router.plan(request(), MODEL)) == ["b"]  # a waits for its probe


def _declaring(standin: StandIn, **info: Any) -> StandIn:
    standin.info = dataclasses.replace(standin.info, **info)
    return standin


def test_zdr_and_quantizations_keep_only_the_providers_that_declare_them() -> None:
    kept = _declaring(StandIn("kept"), zdr=True, quantization="bf16")
    retains = _declaring(StandIn("retains"), zdr=False, quantization="bf16")
    fp8 = _declaring(StandIn("fp8"), zdr=True, quantization="fp8")
    undeclared = StandIn("undeclared")  # no quantization declared: "unknown"
    router = make_router([kept, retains, fp8, undeclared])
    assert set(slugs(router.plan(request(zdr=True), MODEL))) == {"kept", "fp8"}
    assert set(slugs(router.plan(request(quantizations=("bf16",)), MODEL))) == {"kept", "retains"}
    assert slugs(router.plan(request(zdr=True, quantizations=("bf16",)), MODEL)) == ["kept"]
    assert slugs(router.plan(request(quantizations=("unknown",)), MODEL)) == ["undeclared"]
    assert router.plan(request(quantizations=("int4",)), MODEL) == []


def test_preferred_latency_and_throughput_try_the_providers_within_them_first() -> None:
    cheap_slow, dear_fast = StandIn("cheap-slow", 5_000), StandIn("dear-fast", 20_000)
    router = make_router([cheap_slow, dear_fast])
    for _ in range(5):
        router.health.of("cheap-slow").record_success(seconds=8.0, images=1, image_tokens=4096)
        router.health.of("dear-fast").record_success(seconds=1.0, images=1, image_tokens=4096)
    assert slugs(router.plan(request(sort="price"), MODEL)) == ["cheap-slow", "dear-fast"]
    # p50 of 8 s is beyond 2 s: still a fallback, after the one within.
    within = request(sort="price", preferred_max_latency_s=(("p50", 2.0),))
    assert slugs(router.plan(within, MODEL)) == ["dear-fast", "cheap-slow"]
    # 4096 tokens in 8 s is 512 tokens/s, under 1000.
    fast = request(sort="price", preferred_min_throughput=(("p90", 1000.0),))
    assert slugs(router.plan(fast, MODEL)) == ["dear-fast", "cheap-slow"]
    # The weighted default draws only among those within the preference.
    for seed in range(20):
        router.rng.seed(seed)
        assert slugs(router.plan(within, MODEL))[0] == "dear-fast"
    # Both beyond: the order is as without the preference.
    strict = request(sort="price", preferred_max_latency_s=(("p50", 0.5),))
    assert slugs(router.plan(strict, MODEL)) == ["cheap-slow", "dear-fast"]


def test_options_under_the_models_author_reach_every_provider_and_the_slug_wins() -> None:
    a, b = StandIn("a"), StandIn("b")
    router = make_router([a, b])
    options = (
        ("black-forest-labs", (("guidance", 3.0), ("steps", 8))),
        ("a", (("steps", 2),)),
    )
    asked = request(options=options)
    for_a = router.attempt_request(asked, MODEL, a)
    for_b = router.attempt_request(asked, MODEL, b)
    assert (for_a.steps, for_a.guidance) == (2, 3.0)
    assert (for_b.steps, for_b.guidance) == (8, 3.0)
    # Another author's options do not apply to this model.
    other = request(options=(("openai", (("steps", 9),)),))
    assert router.attempt_request(other, MODEL, a).steps is None


def test_a_request_with_adapters_goes_only_where_they_are_held() -> None:
    """A provider applies LoRA adapters only if it says it holds them (`unsupported_reason`);
    one that cannot is never planned for such a request, so it never makes (and bills) an
    image without the adapter."""
    from pixelrouter.types import LoraChoice

    plain = StandIn("plain")
    router = make_router([plain])
    styled = dataclasses.replace(request(), loras=(LoraChoice("ink", 0.8),))
    assert plain.unsupported_reason(styled) == "it does not hold the LoRA adapter(s) ink"
    assert router.plan(styled, MODEL) == []
    assert slugs(router.plan(request(), MODEL)) == ["plain"]
