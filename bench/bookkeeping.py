"""A whole request's bookkeeping (admission, close, outcomes) through `Bookkeeping` on a real
Store, at N concurrent requests (see --help)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from benchdb import database  # noqa: E402

from pixelrouter.billing.bookkeeping import Bookkeeping  # noqa: E402
from pixelrouter.billing.costs import Delivery  # noqa: E402
from pixelrouter.stats.outcomes import outcomes_of  # noqa: E402
from pixelrouter.store import Store  # noqa: E402
from pixelrouter.store.request_records import close_statement  # noqa: E402
from pixelrouter.types import GeneratedImage, ImageRequest, ImageResult, ProviderAttempt  # noqa: E402

USAGE = """\
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bookkeeping.py [--backends postgresql]
     [--concurrency 1,8,64] [--seconds 4] [--threads 0] [--paths statement,transaction]
     [--rounds 1] [--providers 1] [--profile 0] [--json out.json]

What one image request writes, as GenerationService drives `Bookkeeping`, with no HTTP, no
engine and no provider: admission (reserve the maximum cost and record the generation
`pending`, one transaction, in a worker thread), then the close once answered (finish the
record, settle the reservation, count the provider outcome: one transaction), awaited to
the end (`Bookkeeping.closed`). Each of N concurrent requests loops on a random key of 1,000
with a monthly limit (each already holds its balance row). The prices are a fixed 14,000 µ$
(the in-memory cost model is not what is measured); the Store, its database and its
transactions are the real ones.

Paths: `statement` is what the server runs (on PostgreSQL the admission and the close are one
statement each where they can be: `Store.admit_at_once`, `Store.close_at_once`),
`transaction` switches that off (`Store.one_statement = False`: the transaction SQLite runs),
`group` is an experiment: the closes of the process written many per commit (`GroupCommit`).
Every concurrency runs each path in turn, --rounds times, in one process and database, so an
A/B comparison meets the same minute of a noisy machine. --providers N spreads the provider
outcomes over N providers (1: every close adds to the same row of per-minute counts).
--profile N: also N requests one after the other in the main thread under cProfile, per path
(CPU and wall per request, and where the time goes).

Worker threads: asyncio's default executor, min(32, CPUs + 4) threads as in the server
(--threads N: N instead). Prints one JSON object, then a table; exit status 1 when a call
failed or the ledger does not add up (ledger total = requests × price = the keys' counters,
nothing open, nothing reserved, none of the newest 1,000 records pending).
"""

AMOUNT_MICRO = 14_000
KEYS = 1000
LIMIT_MICRO = 10**15  # checked on every reserve, never reached
MODEL = "black-forest-labs/flux.2-klein-4b"


class FixedCosts:
    """The two calls `Bookkeeping` makes of `Costs`, at one fixed price."""

    def max_cost(self, request: ImageRequest) -> int:
        return AMOUNT_MICRO * request.n

    def payment_required(self, request: ImageRequest, amount_micro: int) -> Exception:
        return RuntimeError(f"limit reached for {request.id}: {amount_micro}")


def percentile_ms(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1e3, 3)


# How many providers the outcomes are spread over (--providers): each close adds to its
# provider's row of `provider_outcome_minutes`, locked until it commits.
PROVIDERS = [1]


def _slug(request: ImageRequest) -> str:
    return "bench" if PROVIDERS[0] == 1 else f"bench-{hash(request.id) % PROVIDERS[0]}"


def _delivery(request: ImageRequest) -> Delivery:
    image = GeneratedImage(b"\x89PNG", "image/png", 64, 64, 0, 0)
    slug = _slug(request)
    attempt = ProviderAttempt("Bench", 200, 5, provider_slug=slug, model=MODEL)
    result = ImageResult(
        request_id=request.id,
        model=MODEL,
        images=(image,),
        generation_time_ms=5,
        prompt_tokens=3,
        provider_slug=slug,
        provider_name="Bench",
        attempts=(attempt,),
    )
    return Delivery(request, result, AMOUNT_MICRO, 3, 1024, 6)


async def run_requests(
    books: Bookkeeping, keys: list[str], concurrency: int, seconds: float, warmup: float
) -> tuple[dict[str, list[float]], int, list[str]]:
    samples: dict[str, list[float]] = {"admission": [], "close": [], "request": []}
    errors: list[str] = []
    done = 0
    start = time.perf_counter()
    warm_until, deadline = start + warmup, start + warmup + seconds

    async def client(index: int) -> None:
        nonlocal done
        rng = random.Random(index)
        while (t0 := time.perf_counter()) < deadline:
            key_hash = rng.choice(keys)
            request = ImageRequest(
                id=f"gen-{uuid.uuid4().hex}",
                model=MODEL,
                prompt="bookkeeping",
                width=64,
                height=64,
                key_hash=key_hash,
            )
            try:
                admission = await books.admit(request, api="images")
                t1 = time.perf_counter()
                admission.ran = True
                books.close_after_answer(admission, _delivery(request))
                await books.closed(key_hash)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            t2 = time.perf_counter()
            done += 1
            if warm_until <= t2 <= deadline:
                samples["admission"].append(t1 - t0)
                samples["close"].append(t2 - t1)
                samples["request"].append(t2 - t0)

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return samples, done, errors


class GroupCommit:
    """An experiment, not what the server runs (--paths group): the closes of this process go
    to one thread that writes every close waiting at that moment (up to `batch`) in one
    transaction, their statements (`close_statement`) and the COMMIT sent in one psycopg
    pipeline: one fsync for many closes. A batch that fails is rolled back and each of its
    closes takes `Bookkeeping`'s own path. One process only: batches of several processes
    would lock their balance and minute rows in no common order."""

    def __init__(self, url: str, batch: int = 64) -> None:
        import queue
        import threading

        import psycopg

        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        self.batch = batch
        self.queue: queue.Queue[tuple[str, dict[str, Any], Any]] = queue.Queue()
        self.batches: list[int] = []
        threading.Thread(target=self._run, daemon=True).start()

    def submit(self, sql: str, params: dict[str, Any]) -> bool:
        """Wait for the close's batch; False: it failed (nothing of it was written)."""
        from concurrent.futures import Future

        done: Future[bool] = Future()
        self.queue.put((sql, params, done))
        return done.result()

    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            while len(items) < self.batch and not self.queue.empty():
                items.append(self.queue.get_nowait())
            try:
                with self.conn.transaction(), self.conn.pipeline():
                    cursors = [self.conn.execute(sql, params) for sql, params, _ in items]
                written = [bool(c.fetchone()[0]) for c in cursors]  # type: ignore[index]
            except Exception:
                written = [False] * len(items)
            self.batches.append(len(items))
            for (_, _, done), ok in zip(items, written, strict=True):
                done.set_result(ok)


class GroupedBookkeeping(Bookkeeping):
    """`Bookkeeping` whose closes go through `GroupCommit` while `group` is set."""

    group: GroupCommit | None = None

    def _close_now(self, admission, record, charge_micro, outcomes):  # type: ignore[no-untyped-def]
        request = admission.request
        if self.group is None or request.key_hash is None or not admission.reserved:
            return super()._close_now(admission, record, charge_micro, outcomes)
        sql, params = close_statement(
            request.id,
            record,
            ledger="release" if charge_micro is None else "settle",
            key_hash=request.key_hash,
            amount_micro=charge_micro or 0,
            outcomes=outcomes,
        )
        if not self.group.submit(sql, params):
            super()._close_now(admission, record, charge_micro, outcomes)
        return None


def profile_path(books: Bookkeeping, keys: list[str], count: int, top: int = 25) -> dict[str, Any]:
    """`count` requests back to back in this thread (admission, then the close) under
    cProfile: CPU and wall per request, and the functions that take the most time."""
    import cProfile
    import io
    import pstats

    def one(rng: random.Random) -> None:
        request = ImageRequest(
            id=f"gen-{uuid.uuid4().hex}",
            model=MODEL,
            prompt="bookkeeping",
            width=64,
            height=64,
            key_hash=rng.choice(keys),
        )
        admission = books._admit_now(request, "images", False)
        delivery = _delivery(request)
        record = {
            "state": "succeeded",
            "cancelled": False,
            "model": MODEL,
            "provider_name": "Bench",
            "provider_slug": delivery.result.provider_slug,
            "total_cost_micro": AMOUNT_MICRO,
            "latency_ms": 6,
            "generation_time_ms": 5,
            "finish_reason": "stop",
            "tokens_prompt": 3,
            "tokens_completion": 1024,
            "num_images": 1,
            "undelivered_images": 0,
            "provider_responses": [{"provider_name": "Bench", "status": 200, "latency": 5}],
        }
        outcomes = outcomes_of(delivery.result.attempts, model=MODEL, images=1, image_tokens=1024)
        books._close_now(admission, record, AMOUNT_MICRO, outcomes)

    rng = random.Random(7)
    for _ in range(20):  # warm: statements built, connections open
        one(rng)
    profiler = cProfile.Profile()
    wall, cpu = time.perf_counter(), time.process_time()
    profiler.enable()
    for _ in range(count):
        one(rng)
    profiler.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return {
        "requests": count,
        "wall_ms_per_request": round(wall / count * 1e3, 3),
        "cpu_ms_per_request": round(cpu / count * 1e3, 3),
        "profile": out.getvalue(),
    }


def bench_backend(
    backend: str,
    concurrency: list[int],
    seconds: float,
    threads: int,
    paths: list[str],
    rounds: int,
    profile: int,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    warmup = round(min(1.0, 0.2 * seconds), 3)
    cells: list[dict[str, Any]] = []
    with database(backend, "bookkeeping.db") as url, Store(url) as store:
        store.migrate()
        keys = [
            store.create_key(f"k{i}", limit_micro=LIMIT_MICRO, limit_reset="monthly")[0].hash
            for i in range(KEYS)
        ]
        # Each key's first reservation creates its balance row the long way (a transaction of
        # several statements, on either path): made here, so the cells measure keys in use.
        expires = datetime.now(UTC) + timedelta(minutes=5)
        for i, key_hash in enumerate(keys):
            store.reserve(
                generation_id=f"warm-{i}", key_hash=key_hash, amount_micro=1, expires_at=expires
            )
            store.release(f"warm-{i}")
        books = GroupedBookkeeping(store, FixedCosts())  # type: ignore[arg-type]
        group = GroupCommit(url) if "group" in paths else None
        total = 0
        for path in paths if profile else ():
            store.one_statement = path != "transaction"
            books.group = group if path == "group" else None
            print(f"... {backend}: profile, {path}", file=sys.stderr, flush=True)
            profiled = profile_path(books, keys, profile)
            total += profile + 20
            cells.append({"backend": backend, "path": path, "profiled": profiled})
        for n, _, path in (
            (n, r, path) for n in concurrency for r in range(rounds) for path in paths
        ):
            store.one_statement = path != "transaction"
            books.group = group if path == "group" else None
            batches = len(group.batches) if group else 0
            print(f"... {backend}: {n} concurrent request(s), {path}", file=sys.stderr, flush=True)

            async def cell(n: int = n) -> tuple[dict[str, list[float]], int, list[str]]:
                if threads:
                    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(threads))
                return await run_requests(books, keys, n, seconds, warmup)

            load = os.getloadavg()[0]
            cpu = time.process_time()
            samples, done, errors = asyncio.run(cell())
            cpu = time.process_time() - cpu
            total += done
            row: dict[str, Any] = {
                "backend": backend,
                "path": path,
                "load_average": round(load, 2),
                "concurrency": n,
                "seconds": seconds,
                "requests": len(samples["request"]),
                "requests_per_s": round(len(samples["request"]) / seconds, 1),
                # this process's CPU (every thread) per request, warm-up included
                "cpu_ms_per_request": round(cpu / max(done, 1) * 1e3, 3),
            }
            for name, values in samples.items():
                row[f"{name}_p50_ms"] = percentile_ms(values, 0.50)
                row[f"{name}_p99_ms"] = percentile_ms(values, 0.99)
            if path == "group" and group is not None:
                sizes = group.batches[batches:]
                row["closes_per_commit"] = round(sum(sizes) / max(len(sizes), 1), 2)
            row["errors"] = len(errors)
            row["first_errors"] = errors[:3]
            cells.append(row)
        ledger = store.ledger_total()
        counters = sum(store.key_balance(k).total_used for k in keys)
        reserved = sum(store.key_balance(k).reserved for k in keys)
        pending = [g for g in store.list_generations(limit=1000) if g.state == "pending"]
        invariants = {
            "backend": backend,
            "requests": total,
            "ledger_total_micro": ledger,
            "expected_micro": total * AMOUNT_MICRO,
            "counters_total_used_micro": counters,
            "open_reservations": len(store.open_reservations()),
            "reserved_micro": reserved,
            "pending_records": len(pending),
        }
        invariants["ok"] = (
            ledger == total * AMOUNT_MICRO == counters
            and invariants["open_reservations"] == 0
            and reserved == 0
            and not pending
        )
    return cells, invariants


def main() -> int:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="postgresql")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=0, help="worker threads (0: asyncio's)")
    parser.add_argument("--paths", default="statement")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--providers", type=int, default=1, help="outcomes spread over N")
    parser.add_argument("--profile", type=int, default=0, help="requests profiled per path")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    PROVIDERS[0] = max(1, args.providers)
    if not set(paths) <= {"statement", "transaction", "group"}:
        parser.error("--paths: statement, transaction, group")
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    result: dict[str, Any] = {
        "benchmark": "bookkeeping",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "threads": args.threads or min(32, (os.cpu_count() or 1) + 4),
        "cells": [],
        "invariants": [],
    }
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        cells, invariants = bench_backend(
            backend, concurrency, args.seconds, args.threads, paths, args.rounds, args.profile
        )
        result["cells"] += cells
        result["invariants"].append(invariants)
    errors = sum(c.get("errors", 0) for c in result["cells"])
    result["ok"] = errors == 0 and all(i["ok"] for i in result["invariants"])
    text = json.dumps(result)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print(f"\nwhole request's bookkeeping; worker threads: {result['threads']}")
    for c in result["cells"]:
        if "profiled" in c:
            p = c["profiled"]
            print(
                f"\n{c['backend']} {c['path']}: {p['requests']} requests in one thread, "
                f"{p['wall_ms_per_request']} ms wall, {p['cpu_ms_per_request']} ms CPU each"
            )
            print(p["profile"])
    print(
        f"{'backend':<11} {'path':<11} {'load':>5} {'concurrent':>10} {'req/s':>7} "
        f"{'admission p50/p99':>18} {'close p50/p99':>16} {'request p50/p99 ms':>19} "
        f"{'CPU ms':>6} {'errors':>6}"
    )
    for c in result["cells"]:
        if "profiled" in c:
            continue
        print(
            f"{c['backend']:<11} {c['path']:<11} {c['load_average']:>5} "
            f"{c['concurrency']:>10} {c['requests_per_s']:>7.1f} "
            f"{str(c['admission_p50_ms']) + ' / ' + str(c['admission_p99_ms']):>18} "
            f"{str(c['close_p50_ms']) + ' / ' + str(c['close_p99_ms']):>16} "
            f"{str(c['request_p50_ms']) + ' / ' + str(c['request_p99_ms']):>19} "
            f"{c['cpu_ms_per_request']:>6.2f} {c['errors']:>6}"
            + (f" {c['closes_per_commit']} closes/commit" if "closes_per_commit" in c else "")
        )
    for inv in result["invariants"]:
        print(f"invariants {inv['backend']}: {'OK' if inv['ok'] else 'BROKEN'} {inv}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
