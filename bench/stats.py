"""Statistics: what serving the endpoints API costs with N provider outcomes stored (see --help)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Awaitable, Callable, Iterator  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx  # noqa: E402
from benchdb import database  # noqa: E402

from pixelrouter.catalog import KLEIN_4B  # noqa: E402
from pixelrouter.errors import ProviderUnavailable, provider_down  # noqa: E402
from pixelrouter.keys import generate_key  # noqa: E402
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus  # noqa: E402
from pixelrouter.stats import (  # noqa: E402
    provider_stats,
    providers_stats,
    uptime_hourly,
)
from pixelrouter.store import Store  # noqa: E402
from pixelrouter.store.stats_records import ProviderOutcome  # noqa: E402

USAGE = """\
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/stats.py [--sizes 10000,100000]
     [--backends sqlite,postgresql] [--repeat 50] [--json out.json]

Fills a fresh database with N provider outcomes of 4 providers, spread evenly over the last
24 hours (94 % successes, 4 % provider-caused failures, 2 % rate limits; 40 % of them of the
provider measured alone), then times, each --repeat times after 3 warm-up calls:
 1. provider_stats() of one provider (two statements), and providers_stats() of all 4, what
    the endpoints API runs in one worker thread on one connection (five statements);
 2. uptime_hourly() of one provider: the 72 hourly buckets;
 3. GET /api/v1/models/{model}/endpoints through the real app in process (httpx ASGI
    transport, 4 providers), beside GET /api/v1/models
    (no statistics) as the floor of an HTTP call;
 4. GET /api/v1/models/{model}/stats (4 providers, 72 hours each, 30 days of activity);
 5. record_outcomes() of 2 rows, what closing one generation with a fallback adds.
Prints one JSON object, then a table of p50 / p99 in milliseconds. PostgreSQL: a fresh
database in the server of $PIXELROUTER_BENCH_POSTGRES_URL (default
postgresql://postgres@127.0.0.1:5432/test), dropped afterwards.
"""

PROVIDERS = ("local", "worker-1", "worker-2", "remote")
WEIGHTS = (0.4, 0.2, 0.2, 0.2)
MODEL = KLEIN_4B.id
ENDPOINTS = f"/api/v1/models/{MODEL}/endpoints"
STATS = f"/api/v1/models/{MODEL}/stats"


class StubProvider(ProviderBase):
    """A provider the catalogue lists; the benchmark never generates."""

    def __init__(self, slug: str) -> None:
        self.info = ProviderInfo(
            slug=slug,
            display_name=f"Provider {slug}",
            models=(MODEL,),
            price=KLEIN_4B.price,
            kind="openrouter",
        )

    async def generate(self, request: Any, on_progress: Any = None) -> Any:
        raise ProviderUnavailable("the benchmark does not generate")

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    def status(self) -> ProviderStatus:
        return ProviderStatus(queue_depth=0)

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return None

    async def aclose(self) -> None:
        return None


def percentile_ms(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of `samples` (seconds) in milliseconds."""
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1e3, 3)


def summary(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile_ms(samples, 0.5), "p99_ms": percentile_ms(samples, 0.99)}


def outcomes(n: int, now: datetime, rng: random.Random) -> Iterator[list[ProviderOutcome]]:
    """`n` outcomes evenly over the last day, in chunks of 10 000."""
    chunk: list[ProviderOutcome] = []
    for i in range(n):
        slug = rng.choices(PROVIDERS, WEIGHTS)[0]
        draw = rng.random()
        status = 200 if draw < 0.94 else (502 if draw < 0.98 else 429)
        images = rng.choice((1, 1, 1, 2, 4)) if status == 200 else 0
        chunk.append(
            ProviderOutcome(
                provider_slug=slug,
                provider_name=f"Provider {slug}",
                model=MODEL,
                created_at=now - timedelta(days=1) * (i + 0.5) / n,
                status=status,
                provider_caused=provider_down(status),
                latency_ms=rng.randint(300, 3000) * max(1, images),
                images=images,
                image_tokens=4096 * images,
            )
        )
        if len(chunk) == 10_000:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def time_calls(call: Callable[[], object], repeat: int) -> list[float]:
    for _ in range(3):
        call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


async def time_requests(call: Callable[[], Awaitable[httpx.Response]], repeat: int) -> list[float]:
    for _ in range(3):
        (await call()).raise_for_status()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = await call()
        samples.append(time.perf_counter() - started)
        response.raise_for_status()
    return samples


async def time_http(url: str, store: Store, repeat: int) -> dict[str, list[float]]:
    from pixelrouter.app import create_app
    from pixelrouter.config import Settings

    with tempfile.TemporaryDirectory(prefix="pixelrouter-bench-") as folder:
        # An admin key of our own, so the app does not create (and print) one.
        settings = Settings(
            data_dir=Path(folder), database_url=url, demo=True, admin_key=generate_key()
        )
        app = create_app(settings, providers=[StubProvider(s) for s in PROVIDERS], store=store)
        _, key = store.create_key("bench")
        headers = {"Authorization": f"Bearer {key}"}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench", headers=headers, timeout=60
            ) as client:
                return {
                    "http_models": await time_requests(
                        lambda: client.get("/api/v1/models"), repeat
                    ),
                    "http_endpoints": await time_requests(lambda: client.get(ENDPOINTS), repeat),
                    "http_stats": await time_requests(
                        lambda: client.get(STATS), max(5, repeat // 5)
                    ),
                }


def bench(backend: str, size: int, repeat: int, progress: Callable[[str], None]) -> dict[str, Any]:
    rng = random.Random(size)
    now = datetime.now(UTC)
    with database(backend, "stats.db") as url, Store(url) as store:
        store.migrate()
        progress(f"{backend}: inserting {size} outcomes")
        started = time.perf_counter()
        for chunk in outcomes(size, now, rng):
            store.record_outcomes(chunk)
        fill_s = time.perf_counter() - started
        if backend == "postgresql":
            with store.engine.begin() as conn:
                conn.exec_driver_sql("ANALYZE provider_outcomes")
        progress(f"{backend} {size}: timing")
        stats = provider_stats(store, "local", datetime.now(UTC), model=MODEL)
        timings: dict[str, list[float]] = {
            "provider_stats": time_calls(
                lambda: provider_stats(store, "local", datetime.now(UTC), model=MODEL), repeat
            ),
            "providers_stats_4": time_calls(
                lambda: providers_stats(store, PROVIDERS, datetime.now(UTC), model=MODEL), repeat
            ),
            "uptime_hourly": time_calls(
                lambda: uptime_hourly(store, "local", datetime.now(UTC), model=MODEL), repeat
            ),
        }
        timings.update(asyncio.run(time_http(url, store, repeat)))
        one_generation = [
            ProviderOutcome("remote", "Provider remote", MODEL, now, 502, True, 900),
            ProviderOutcome("local", "Provider local", MODEL, now, 200, False, 1200, 1, 4096),
        ]
        timings["record_outcomes_2_rows"] = time_calls(
            lambda: store.record_outcomes(one_generation), repeat
        )
        return {
            "backend": backend,
            "outcomes": size,
            "fill_s": round(fill_s, 2),
            "local_counts_1d": stats.counts["1d"].__dict__,
            "local_samples_30m": stats.samples_last_30m,
            "timings": {name: summary(samples) for name, samples in timings.items()},
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "benchmark": "stats_endpoints",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {"repeat": args.repeat, "providers": len(PROVIDERS), "span_hours": 24},
        "cells": [bench(b, n, args.repeat, progress) for b in backends for n in sizes],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    names = list(result["cells"][0]["timings"])
    print()
    print("| backend | outcomes | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for cell in result["cells"]:
        figures = " | ".join(
            f"{cell['timings'][n]['p50_ms']:.1f} / {cell['timings'][n]['p99_ms']:.1f}"
            for n in names
        )
        print(f"| {cell['backend']} | {cell['outcomes']} | {figures} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
