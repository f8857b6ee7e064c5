"""Statistics through the real app in process: the endpoints API's figures match what was
recorded, the stats and apps endpoints, and `/metrics` in Prometheus' text format."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Api, make_api
from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import ProviderError
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.stats import percentiles
from pixelrouter.store import utcnow

ENDPOINTS = "/api/v1/models/black-forest-labs/flux.2-klein-4b/endpoints"
STATS = "/api/v1/models/black-forest-labs/flux.2-klein-4b/stats"
PROMPT = "a lighthouse, stats-test-prompt-7f3a"
# Only the flaky provider, no fallbacks: every outcome of the script is the flaky one's.
FLAKY_ONLY = {"order": ["flaky"], "allow_fallbacks": False}


class FlakyUpstream(ProviderBase):
    """A provider that follows a script: "ok" generates with the demo engine, "502" and "429"
    fail as an upstream would, "wrong_size" answers an image of another size (garbage)."""

    def __init__(self, engine_provider: Any) -> None:
        self.engine_provider = engine_provider
        self.script: list[str] = []
        self.info = ProviderInfo(
            slug="flaky",
            display_name="Flaky upstream",
            models=(KLEIN_4B.id,),
            price=KLEIN_4B.price,
            kind="openrouter",
        )

    async def generate(self, request, on_progress=None):
        step = self.script.pop(0) if self.script else "ok"
        if step == "502":
            raise ProviderError("upstream answered HTTP 500")
        if step == "429":
            raise ProviderError("upstream is rate limited", status=429)
        if step == "wrong_size":
            request = dataclasses.replace(request, width=64, height=64)
        return await self.engine_provider.generate(request, on_progress)

    def readiness(self):
        return True, "ready"

    def status(self):
        return ProviderStatus(queue_depth=0)

    def count_prompt_tokens(self, prompt):
        return None

    async def aclose(self):
        return None


@pytest.fixture
async def flaky_api(
    tmp_path: Path, demo_provider: object
) -> AsyncIterator[tuple[Api, FlakyUpstream]]:
    flaky = FlakyUpstream(demo_provider)
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [flaky, demo_provider]):
        yield api, flaky


async def _generate(api: Api, **extra: Any) -> Any:
    body = {"prompt": PROMPT, "size": "128x128", **extra}
    return await api.post("/api/v1/images", json=body)


def _endpoint(body: dict[str, Any], slug: str) -> dict[str, Any]:
    [endpoint] = [e for e in body["data"]["endpoints"] if e["tag"] == slug]
    return endpoint


async def test_endpoints_show_what_was_recorded(flaky_api) -> None:
    api, flaky = flaky_api
    before = (await api.get(ENDPOINTS)).json()
    for slug in ("flaky", "local"):
        endpoint = _endpoint(before, slug)
        assert endpoint["uptime_last_30m"] is None and endpoint["latency_last_30m"] is None
        assert endpoint["status"] == 0

    # 6 successes, 2 provider-caused failures (a 5xx, a garbage answer), 1 rate limit.
    # No two failures in a row, so the circuit never opens.
    flaky.script = ["ok", "502", "ok", "ok", "wrong_size", "ok", "ok", "ok", "429"]
    statuses = [(await _generate(api, provider=FLAKY_ONLY)).status_code for _ in range(9)]
    assert statuses == [200, 502, 200, 200, 502, 200, 200, 200, 503]
    served = (await _generate(api, provider={"only": ["local"]})).status_code
    assert served == 200

    body = (await api.get(ENDPOINTS)).json()
    endpoint = _endpoint(body, "flaky")
    assert endpoint["uptime_last_5m"] == pytest.approx(6 / 8 * 100)
    assert endpoint["uptime_last_30m"] == pytest.approx(6 / 8 * 100)
    assert endpoint["uptime_last_1d"] == pytest.approx(6 / 8 * 100)
    assert endpoint["status"] == -1  # degraded: under 95 % over 30 minutes

    local = _endpoint(body, "local")
    assert local["uptime_last_5m"] is None  # one sample: too few for an uptime
    assert local["latency_last_30m"] is not None and local["status"] == 0


async def test_latency_and_throughput_match_the_generation_records(flaky_api) -> None:
    api, _ = flaky_api
    ids = []
    for n in (1, 2, 1, 1, 2):
        r = await _generate(api, n=n, provider=FLAKY_ONLY)
        assert r.status_code == 200, r.text
        ids.append((r.headers["x-generation-id"], n))
    latencies, throughputs = [], []
    for gen_id, _ in ids:
        record = (await api.get(f"/api/v1/generation?id={gen_id}")).json()["data"]
        [attempt] = record["provider_responses"]
        assert attempt["provider_name"] == "Flaky upstream" and attempt["status"] == 200
        seconds = max(attempt["latency"], 1) / 1000
        latencies.append(attempt["latency"])  # milliseconds per request, end to end
        throughputs.append(record["native_tokens_completion_images"] / seconds)
    endpoint = _endpoint((await api.get(ENDPOINTS)).json(), "flaky")
    assert endpoint["uptime_last_5m"] == 100.0
    assert endpoint["latency_last_30m"] == percentiles(latencies, digits=1)
    assert endpoint["throughput_last_30m"] == percentiles(throughputs, digits=1)
    assert set(endpoint["latency_last_30m"]) == {"p50", "p75", "p90", "p99"}
    # The current API's per-workload figures: the same numbers, and how many requests.
    assert endpoint["perf_last_30m_by_workload"] == {
        "image_generation": {
            "latency": endpoint["latency_last_30m"],
            "request_count": len(ids),
            "throughput": endpoint["throughput_last_30m"],
        }
    }


async def test_stats_and_apps_endpoints(flaky_api) -> None:
    api, flaky = flaky_api
    flaky.script = ["ok", "502", "ok"]
    for _ in range(3):
        await _generate(api, provider=FLAKY_ONLY)
    app_a = {"HTTP-Referer": "https://a.example", "X-Title": "App A"}
    for _ in range(2):
        r = await api.post("/api/v1/images", json={"prompt": "x", "size": "128x128"}, headers=app_a)
        assert r.status_code == 200
    titled = {"X-OpenRouter-Title": "Titled"}
    r = await api.post("/api/v1/images", json={"prompt": "x", "size": "128x128"}, headers=titled)
    assert r.status_code == 200

    assert (await api.client.get(STATS)).status_code == 401
    assert (await api.client.get("/api/v1/apps")).status_code == 401
    r = await api.get(STATS)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["id"] == KLEIN_4B.id
    providers = {p["tag"]: p for p in data["providers"]}
    assert set(providers) == {"flaky", "local"}
    flaky_stats = providers["flaky"]
    assert len(flaky_stats["uptime_hourly"]) == 72
    current = flaky_stats["uptime_hourly"][-1]
    assert (current["successes"], current["errors"]) == (2, 1)
    assert current["hour"].endswith(":00:00Z")
    assert flaky_stats["outcomes"]["30m"] == {"successes": 2, "errors": 1, "excluded": 0}
    assert flaky_stats["uptime_last_30m"] is None  # 3 samples
    assert flaky_stats["samples_last_30m"] == 2
    assert flaky_stats["latency_last_30m"]["p50"] > 0
    assert sum(row["requests"] for row in data["activity"]) == 5  # succeeded ones

    # Management keys may read them too (the web page uses whichever key it holds).
    assert (await api.get(STATS, key=api.admin_key)).status_code == 200
    apps = (await api.get("/api/v1/apps")).json()
    assert [(a["app"], a["requests"]) for a in apps["data"]] == [
        ("App A", 2),  # ties go by image tokens, then by name
        ("Unattributed", 2),
        ("Titled", 1),
    ]
    assert apps["sort"] == "requests" and len(apps["month"]) == 7
    apps_a = (await api.get("/api/v1/apps?sort=image_tokens&limit=1")).json()["data"]
    assert len(apps_a) == 1 and apps_a[0]["image_tokens"] == 2 * 4096
    r = await api.get("/api/v1/apps?model=nobody/nothing")
    assert r.status_code == 404
    r = await api.get("/api/v1/apps?sort=cost")
    assert r.status_code in (400, 422)


async def test_a_failing_statistics_write_never_breaks_a_generation(
    flaky_api, monkeypatch, caplog
) -> None:
    api, _ = flaky_api
    store = api.app.state.px.store  # type: ignore[attr-defined]

    def broken(outcomes: object) -> None:
        raise RuntimeError("the stats table is gone")

    monkeypatch.setattr(store, "record_outcomes", broken)
    with caplog.at_level(logging.ERROR):
        r = await _generate(api, provider=FLAKY_ONLY)
        assert r.status_code == 200
        # Reading the record waits for the bookkeeping written just after the answer.
        record = (await api.get(f"/api/v1/generation?id={r.headers['x-generation-id']}")).json()
    assert any("provider outcomes" in rec.getMessage() for rec in caplog.records)
    assert record["data"]["total_cost"] == 0.014


async def test_endpoints_still_answer_when_statistics_cannot_be_read(
    flaky_api, monkeypatch
) -> None:
    api, _ = flaky_api
    store = api.app.state.px.store  # type: ignore[attr-defined]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no stats")

    monkeypatch.setattr(store, "outcome_counts", broken)
    r = await api.get(ENDPOINTS)
    assert r.status_code == 200
    assert _endpoint(r.json(), "flaky")["uptime_last_30m"] is None


def _samples(text: str) -> dict[str, list[Any]]:
    by_name: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            by_name.setdefault(sample.name, []).append(sample)
    return by_name


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_metrics_count_requests_and_hold_no_key(flaky_api) -> None:
    api, flaky = flaky_api
    flaky.script = ["ok", "502", "ok", "429"]
    statuses = [(await _generate(api, provider=FLAKY_ONLY)).status_code for _ in range(4)]
    assert statuses == [200, 502, 200, 503]
    r = await _generate(api, n=2, size="1024x1024", provider={"only": ["local"]})
    assert r.status_code == 200
    assert (await api.get(ENDPOINTS)).status_code == 200
    assert (await api.client.get("/api/v1/nowhere/sk-pr-v1-" + "0" * 64)).status_code == 404

    r = await api.client.get("/metrics")  # no key: Prometheus scrapes without one
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for secret in (api.key, api.admin_key, "sk-pr-v1", PROMPT, "a.example"):
        assert secret not in text
    samples = _samples(text)

    images = "/api/v1/images"
    total = "pixelrouter_requests_total"
    assert (
        _value(samples, total, endpoint=images, method="POST", status="200", provider="flaky") == 2
    )
    assert _value(samples, total, endpoint=images, status="502", provider="none") == 1
    assert _value(samples, total, endpoint=images, status="503", provider="none") == 1
    assert _value(samples, total, endpoint=images, status="200", provider="local") == 1
    endpoints = "/api/v1/models/{author}/{slug}/endpoints"
    assert _value(samples, total, endpoint=endpoints, method="GET", status="200") == 1
    assert _value(samples, total, endpoint="unmatched", status="404") == 1
    assert _value(samples, total, endpoint="/api/v1/keys", method="POST", status="201") == 1
    latency = "pixelrouter_request_latency_seconds_count"
    assert _value(samples, latency, endpoint=images) == 5
    assert (
        _value(samples, "pixelrouter_request_latency_seconds_bucket", endpoint=images, le="+Inf")
        == 5
    )

    assert _value(samples, "pixelrouter_images_generated_total", provider="flaky") == 2
    assert _value(samples, "pixelrouter_images_generated_total", provider="local") == 2
    assert _value(samples, "pixelrouter_megapixels_generated_total", provider="flaky") == 2
    assert _value(samples, "pixelrouter_megapixels_generated_total", provider="local") == 2
    attempts = "pixelrouter_provider_attempts_total"
    assert _value(samples, attempts, provider="flaky", status="200") == 2
    assert _value(samples, attempts, provider="flaky", status="502") == 1
    assert _value(samples, attempts, provider="flaky", status="429") == 1

    assert _value(samples, "pixelrouter_engine_queue_depth", provider="local") == 0
    batches = _value(samples, "pixelrouter_engine_batch_size_count", provider="local")
    assert batches >= 3  # the demo engine is shared by the test run: at least these
    assert (
        _value(samples, "pixelrouter_engine_batch_size_bucket", provider="local", le="+Inf")
        == batches
    )
    assert _value(samples, "pixelrouter_provider_ready", provider="local") == 1
    assert samples["pixelrouter_billing_reservations_open"][0].value == 0


async def test_metrics_count_open_reservations(flaky_api) -> None:
    api, _ = flaky_api
    store = api.app.state.px.store  # type: ignore[attr-defined]
    record, _ = store.create_key("reservations")
    store.reserve(
        generation_id="gen-open",
        key_hash=record.hash,
        amount_micro=14_000,
        expires_at=utcnow() + timedelta(minutes=5),
    )
    api.app.state.metrics.scrape.cache_s = 0  # type: ignore[attr-defined]
    samples = _samples((await api.client.get("/metrics")).text)
    assert samples["pixelrouter_billing_reservations_open"][0].value == 1


async def test_any_static_path_is_one_metrics_series(sqlite_api) -> None:
    """Label values come from the app's routes: 21 static paths (some 404, one of 3000
    characters) add one series, not 21."""
    api = sqlite_api
    for i in range(20):
        await api.client.get(f"/static/no-such-file-{i}.js")
    await api.client.get("/static/" + "x" * 3000)
    await api.client.get("/static/chart.umd.js")
    text = (await api.client.get("/metrics")).text
    endpoints = {s.labels["endpoint"] for s in _samples(text)["pixelrouter_requests_total"]}
    assert "/static/{path}" in endpoints
    assert not any(
        "no-such-file" in e or "xxx" in e or e == "/static/chart.umd.js" for e in endpoints
    )
