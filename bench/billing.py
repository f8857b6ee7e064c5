"""Billing ledger: reserve+settle pairs/s and billing latency, SQLite vs PostgreSQL (see --help)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(1, str(ROOT / "tests"))  # tests/pgbouncer.py: the PgBouncer the tests start

from benchdb import _libpq, database, postgres_admin_url  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from pixelrouter.store import Store  # noqa: E402

USAGE = """\
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/billing.py [--seconds 5]
     [--backends sqlite,postgresql] [--clients 1,8,64] [--json out.json] [--quick]
     [--workloads fleet,spread,hot] [--processes 1] [--pgbouncer] [--no-pgbench]

Measures the billing ledger of the Store (no HTTP, no engine):
 1. reserve+settle pairs/s and per-pair latency at each client count, with client threads
    sharing one Store per process (--processes P: P processes, clients/P threads each, as P
    gateways would); three workloads: 1,000 keys each with a monthly limit (a fleet), 16 keys
    without a limit, and every client on one hot key with a (never reached) limit. On
    PostgreSQL, `pgbench -N` runs at the same client count just before each cell, on the same
    server (and through the same PgBouncer): the cell's `pgbench_ratio` is pairs/s divided by
    pgbench's transactions/s (a pair needs two transactions, so 0.5 is the ceiling);
    --pgbouncer runs PostgreSQL through Debian's PgBouncer in transaction pooling mode,
    started on a free loopback port (tests/pgbouncer.py);
 2. the billing time one request adds (reserve + settle, each through asyncio.to_thread as the
    service calls them) at 1 and 8 concurrent requests, each on its own key with a limit;
 3. the ledger invariants after the run: ledger_total == pairs * amount, no open reservation,
    reserved == 0 on every key. Exit status 1 if one is broken or a call failed.
Prints one JSON object, then a table. PostgreSQL: a fresh database is created in the server of
$PIXELROUTER_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test) and dropped
afterwards. SQLite: a WAL file in a temporary folder, as the server uses it.
"""

AMOUNT_MICRO = 14_000  # one 1024x1024 image of a typical model
SPREAD_KEYS = 16
FLEET_KEYS = 1000
HOT_LIMIT_MICRO = 10**15  # large enough never to refuse, but checked on every reserve
LATENCY_CLIENTS = (1, 8)
WORKLOADS = {
    "fleet": f"{FLEET_KEYS} keys, monthly limits",
    "spread": f"{SPREAD_KEYS} keys, no limit",
    "hot": "1 hot key, with limit",
}


def percentile_ms(samples: list[float], q: float) -> float | None:
    """Nearest-rank percentile of `samples` (seconds) in milliseconds."""
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1e3, 3)


@dataclass
class ClientResult:
    pairs: int = 0  # every pair settled, warm-up and stragglers included (for the invariants)
    latencies: list[float] = field(default_factory=list)  # pairs completed in the window
    refused: int = 0  # reserve returned None
    errors: list[str] = field(default_factory=list)


@dataclass
class Window:
    warm_until: float = 0.0
    deadline: float = 0.0


def run_pairs(
    store: Store, keys: list[str], clients: int, seconds: float, warmup: float
) -> list[ClientResult]:
    """`clients` threads loop reserve → settle on random `keys` until the deadline."""
    window = Window()

    def open_window() -> None:  # runs once, when every thread has reached the barrier
        now = time.perf_counter()
        window.warm_until, window.deadline = now + warmup, now + warmup + seconds

    barrier = threading.Barrier(clients, action=open_window)
    results = [ClientResult() for _ in range(clients)]
    expires = datetime.now(UTC) + timedelta(hours=1)

    def client(index: int) -> None:
        out, rng = results[index], random.Random(index)
        barrier.wait()
        while (start := time.perf_counter()) < window.deadline:
            generation_id = f"gen-{uuid.uuid4().hex}"
            try:
                held = store.reserve(
                    generation_id=generation_id,
                    key_hash=rng.choice(keys),
                    amount_micro=AMOUNT_MICRO,
                    expires_at=expires,
                )
                if held is None:
                    out.refused += 1
                    continue
                if not store.settle(generation_id, AMOUNT_MICRO):
                    out.errors.append(f"settle({generation_id}) returned False")
                    continue
            except Exception as exc:  # reported and counted; the run goes on
                out.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            end = time.perf_counter()
            out.pairs += 1
            if window.warm_until <= end <= window.deadline:
                out.latencies.append(end - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _child_pairs(
    url: str,
    keys: list[str],
    clients: int,
    seconds: float,
    warmup: float,
    start_at: float,
    out: Any,
) -> None:
    """One gateway-like process: its own Store, `clients` threads, from wall time `start_at`."""
    try:
        with Store(url) as store:
            # Connect the pool before the window opens, as a running gateway has.
            with contextlib.ExitStack() as stack:
                for _ in range(min(clients, 16)):
                    stack.enter_context(store.engine.connect())
            time.sleep(max(0.0, start_at - time.time()))
            results = run_pairs(store, keys, clients, seconds, warmup)
        out.put([(r.pairs, r.latencies, r.refused, r.errors[:3]) for r in results])
    except Exception as exc:
        out.put([(0, [], 0, [f"{type(exc).__name__}: {exc}"[:300]])])


def run_pairs_processes(
    url: str, keys: list[str], clients: int, processes: int, seconds: float, warmup: float
) -> list[ClientResult]:
    """`run_pairs` in `processes` forked processes, each with a Store of its own."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start_at = time.time() + 3.0
    share = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    children = [
        context.Process(target=_child_pairs, args=(url, keys, n, seconds, warmup, start_at, queue))
        for n in share
        if n
    ]
    for child in children:
        child.start()
    results = []
    for _ in children:
        for pairs, latencies, refused, errors in queue.get(timeout=seconds + warmup + 120):
            results.append(ClientResult(pairs, latencies, refused, errors))
    for child in children:
        child.join(timeout=30)
    return results


def pgbench_tps(libpq_url: str, clients: int, seconds: float) -> float | None:
    """`pgbench -N` (one UPDATE, one SELECT, one INSERT per transaction) at `clients`."""
    program = shutil.which("pgbench")
    if program is None:
        return None
    done = subprocess.run(
        [
            program,
            "-N",
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 1)),
            "-T",
            str(max(1, round(seconds))),
            libpq_url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    return float(found.group(1)) if found else None


@contextlib.contextmanager
def pgbench_database(url: str) -> Iterator[str | None]:
    """A scratch database in `url`'s server, initialised by `pgbench -i` (scale 1)."""
    program = shutil.which("pgbench")
    if program is None:
        yield None
        return
    with database("postgresql") as scratch:
        target = make_url(scratch)
        direct = _libpq(scratch)
        subprocess.run(
            [program, "-i", "-q", "-s", "1", direct], capture_output=True, timeout=120, check=True
        )
        yield make_url(url).set(database=target.database).render_as_string(False)


def throughput_cell(
    store: Store,
    backend: str,
    workload: str,
    keys: list[str],
    clients: int,
    seconds: float,
    warmup: float,
    processes: int = 1,
) -> tuple[dict[str, Any], int]:
    if processes > 1:
        results = run_pairs_processes(store.url, keys, clients, processes, seconds, warmup)
    else:
        results = run_pairs(store, keys, clients, seconds, warmup)
    latencies = [x for r in results for x in r.latencies]
    errors = [e for r in results for e in r.errors]
    cell = {
        "backend": backend,
        "workload": workload,
        "keys": WORKLOADS[workload],
        "clients": clients,
        "processes": processes,
        "seconds": seconds,
        "pairs_in_window": len(latencies),
        "pairs_per_s": round(len(latencies) / seconds, 1),
        "pair_p50_ms": percentile_ms(latencies, 0.50),
        "pair_p99_ms": percentile_ms(latencies, 0.99),
        "refused": sum(r.refused for r in results),
        "errors": len(errors),
        "first_errors": errors[:3],
    }
    return cell, sum(r.pairs for r in results)


async def billing_latency(
    store: Store, keys: list[str], seconds: float, warmup: float
) -> tuple[dict[str, list[float]], int, list[str]]:
    """Concurrent requests, one per key, each billing as the service does: reserve, then settle,
    each in the default thread pool (back to back: no generation in between)."""
    samples: dict[str, list[float]] = {"reserve": [], "settle": [], "billing": []}
    errors: list[str] = []
    pairs = 0
    started = time.perf_counter()
    warm_until, deadline = started + warmup, started + warmup + seconds

    async def client(key_hash: str) -> None:
        nonlocal pairs
        while (t0 := time.perf_counter()) < deadline:
            generation_id = f"gen-{uuid.uuid4().hex}"
            try:
                held = await asyncio.to_thread(
                    store.reserve,
                    generation_id=generation_id,
                    key_hash=key_hash,
                    amount_micro=AMOUNT_MICRO,
                    expires_at=datetime.now(UTC) + timedelta(seconds=660),
                )
                t1 = time.perf_counter()
                if held is None:
                    errors.append(f"reserve on {key_hash[:8]} refused")
                    continue
                if not await asyncio.to_thread(store.settle, generation_id, AMOUNT_MICRO):
                    errors.append(f"settle({generation_id}) returned False")
                    continue
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            t2 = time.perf_counter()
            pairs += 1
            if warm_until <= t2 <= deadline:
                samples["reserve"].append(t1 - t0)
                samples["settle"].append(t2 - t1)
                samples["billing"].append(t2 - t0)

    await asyncio.gather(*(client(k) for k in keys))
    return samples, pairs, errors


def latency_cell(
    store: Store, backend: str, keys: list[str], seconds: float, warmup: float
) -> tuple[dict[str, Any], int]:
    samples, pairs, errors = asyncio.run(billing_latency(store, keys, seconds, warmup))
    cell: dict[str, Any] = {
        "backend": backend,
        "clients": len(keys),
        "requests": len(samples["billing"]),
    }
    for name, values in samples.items():
        cell[f"{name}_p50_ms"] = percentile_ms(values, 0.50)
        cell[f"{name}_p99_ms"] = percentile_ms(values, 0.99)
    cell["errors"] = len(errors)
    cell["first_errors"] = errors[:3]
    return cell, pairs


def check_invariants(store: Store, backend: str, pairs: int, keys: list[str]) -> dict[str, Any]:
    total = store.ledger_total()
    open_count = len(store.open_reservations())
    balances = [store.key_balance(k) for k in keys]
    reserved = sum(b.reserved for b in balances)
    total_used = sum(b.total_used for b in balances)
    expected = pairs * AMOUNT_MICRO
    return {
        "backend": backend,
        "pairs": pairs,
        "ledger_total_micro": total,
        "expected_micro": expected,
        "counters_total_used_micro": total_used,
        "open_reservations": open_count,
        "reserved_micro": reserved,
        "ok": total == expected == total_used and open_count == 0 and reserved == 0,
    }


def bench_backend(
    backend: str,
    clients: list[int],
    seconds: float,
    warmup: float,
    progress: Callable[[str], None],
    *,
    workloads: list[str],
    processes: int = 1,
    bouncer: Any = None,
    pgbench: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    label = backend + ("+pgbouncer" if bouncer is not None else "")
    with database(backend, "billing.db") as direct_url:
        url = direct_url if bouncer is None else bouncer.url_for(direct_url)
        with Store(url) as store, contextlib.ExitStack() as stack:
            store.migrate()
            info = {
                "backend": label,
                "server_version": _server_version(store),
                "pool": store.engine.pool.status(),
            }
            pgbench_url = None
            if backend == "postgresql" and pgbench:
                pgbench_url = stack.enter_context(pgbench_database(direct_url))
            keyed = {
                "fleet": [
                    store.create_key(
                        f"fleet {i}", limit_micro=HOT_LIMIT_MICRO, limit_reset="monthly"
                    )[0].hash
                    for i in range(FLEET_KEYS if "fleet" in workloads else 0)
                ],
                "spread": [store.create_key(f"spread {i}")[0].hash for i in range(SPREAD_KEYS)],
                "hot": [store.create_key("hot", limit_micro=HOT_LIMIT_MICRO)[0].hash],
            }
            per_request = [
                store.create_key(f"latency {i}", limit_micro=HOT_LIMIT_MICRO)[0].hash
                for i in range(max(LATENCY_CLIENTS))
            ]
            pairs, throughput, latency = 0, [], []
            tps: dict[tuple[int, bool], float | None] = {}
            for workload in workloads:
                keys = keyed[workload]
                for n in clients:
                    progress(f"{label}: {WORKLOADS[workload]}, {n} client(s)")
                    direct_tps = pgbouncer_tps = None
                    if pgbench_url is not None:
                        # Run just before the cell, every time: the machine's load moves.
                        direct_tps = pgbench_tps(_libpq(pgbench_url), n, seconds)
                        if bouncer is not None:
                            pgbouncer_tps = pgbench_tps(
                                _libpq(bouncer.url_for(pgbench_url)), n, seconds
                            )
                        tps[(n, False)], tps[(n, True)] = direct_tps, pgbouncer_tps
                    cell, done = throughput_cell(
                        store, label, workload, keys, n, seconds, warmup, processes
                    )
                    if direct_tps:
                        cell["pgbench_tps"] = direct_tps
                        cell["pgbench_ratio"] = round(cell["pairs_per_s"] / direct_tps, 3)
                    if pgbouncer_tps:
                        cell["pgbench_pgbouncer_tps"] = pgbouncer_tps
                        cell["pgbench_pgbouncer_ratio"] = round(
                            cell["pairs_per_s"] / pgbouncer_tps, 3
                        )
                    throughput.append(cell)
                    pairs += done
            for n in LATENCY_CLIENTS:
                progress(f"{label}: billing latency, {n} concurrent request(s)")
                cell, done = latency_cell(store, label, per_request[:n], seconds, warmup)
                latency.append(cell)
                pairs += done
            all_keys = [k for keys in keyed.values() for k in keys] + per_request
            invariants = check_invariants(store, label, pairs, all_keys)
    return throughput, latency, invariants, info


def _server_version(store: Store) -> str:
    with store.engine.connect() as conn:
        if store.backend == "sqlite":
            return "SQLite " + str(conn.exec_driver_sql("select sqlite_version()").scalar())
        return str(conn.exec_driver_sql("show server_version").scalar())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(result: dict[str, Any]) -> None:
    cfg = result["config"]
    print(
        f"\nreserve+settle pairs of {AMOUNT_MICRO} µ$; {cfg['seconds']} s per cell after "
        f"{cfg['warmup_s']} s warm-up; client threads share one Store"
    )
    print(
        f"{'backend':<11} {'keys':<23} {'clients':>7} {'pairs/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} {'pgbench tps':>11} {'ratio':>6}"
    )
    for c in result["throughput"]:
        print(
            f"{c['backend']:<11} {c['keys']:<23} {c['clients']:>7} {c['pairs_per_s']:>9.1f} "
            f"{_fmt(c['pair_p50_ms']):>8} {_fmt(c['pair_p99_ms']):>8} {c['errors']:>6} "
            f"{_fmt(c.get('pgbench_tps')):>11} {_fmt(c.get('pgbench_ratio')):>6}"
        )
    print("\nbilling time per request (reserve + settle via asyncio.to_thread, own key with limit)")
    print(
        f"{'backend':<11} {'clients':>7} {'reserve p50/p99':>16} {'settle p50/p99':>16} "
        f"{'billing p50/p99 ms':>19} {'requests':>9}"
    )
    for c in result["latency"]:
        print(
            f"{c['backend']:<11} {c['clients']:>7} "
            f"{_fmt(c['reserve_p50_ms']) + ' / ' + _fmt(c['reserve_p99_ms']):>16} "
            f"{_fmt(c['settle_p50_ms']) + ' / ' + _fmt(c['settle_p99_ms']):>16} "
            f"{_fmt(c['billing_p50_ms']) + ' / ' + _fmt(c['billing_p99_ms']):>19} "
            f"{c['requests']:>9}"
        )
    print("\ninvariants after the run")
    for inv in result["invariants"]:
        print(
            f"{inv['backend']:<11} pairs={inv['pairs']} ledger_total={inv['ledger_total_micro']} "
            f"(expected {inv['expected_micro']}, counters {inv['counters_total_used_micro']}) "
            f"open_reservations={inv['open_reservations']} reserved={inv['reserved_micro']} "
            f"{'OK' if inv['ok'] else 'BROKEN'}"
        )


def _csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per cell")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--clients", type=_csv_ints, default=[1, 8, 64])
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke run: about 1 s per cell")
    parser.add_argument("--workloads", default="fleet,spread,hot")
    parser.add_argument("--processes", type=int, default=1, help="processes sharing the clients")
    parser.add_argument(
        "--pgbouncer", action="store_true", help="PostgreSQL through PgBouncer (transaction mode)"
    )
    parser.add_argument("--pgbouncer-pool", type=int, default=16, help="its server connections")
    parser.add_argument("--no-pgbench", action="store_true", help="no pgbench -N comparison")
    args = parser.parse_args()
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for workload in workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r}: use {', '.join(WORKLOADS)}")
    seconds = 1.0 if args.quick else args.seconds
    warmup = round(min(1.0, 0.2 * seconds), 3)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}: use sqlite and/or postgresql")

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "benchmark": "billing_ledger",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # what asyncio.to_thread (the service's path) has on this machine
            "default_executor_threads": min(32, (os.cpu_count() or 1) + 4),
        },
        "config": {
            "seconds": seconds,
            "warmup_s": warmup,
            "clients": args.clients,
            "latency_clients": list(LATENCY_CLIENTS),
            "amount_micro": AMOUNT_MICRO,
            "spread_keys": SPREAD_KEYS,
            "fleet_keys": FLEET_KEYS,
            "workloads": workloads,
            "processes": args.processes,
            "pgbouncer": args.pgbouncer,
            "pgbouncer_pool": args.pgbouncer_pool if args.pgbouncer else None,
            "hot_limit_micro": HOT_LIMIT_MICRO,
        },
        "backends": [],
        "throughput": [],
        "latency": [],
        "invariants": [],
    }
    started = time.perf_counter()
    for backend in backends:
        try:
            with contextlib.ExitStack() as stack:
                bouncer = None
                if args.pgbouncer and backend == "postgresql":
                    from pgbouncer import pgbouncer

                    port = make_url(postgres_admin_url()).port or 5432
                    bouncer = stack.enter_context(
                        pgbouncer(upstream_port=port, pool_size=args.pgbouncer_pool)
                    )
                throughput, latency, invariants, info = bench_backend(
                    backend,
                    args.clients,
                    seconds,
                    warmup,
                    progress,
                    workloads=workloads,
                    processes=args.processes,
                    bouncer=bouncer,
                    pgbench=not args.no_pgbench,
                )
        except Exception as exc:
            if backend == "postgresql" and "connect" in str(exc).lower():
                print(
                    f"cannot reach PostgreSQL at {make_url(postgres_admin_url())!r}: {exc}\n"
                    "start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
                    "main start",
                    file=sys.stderr,
                )
                return 2
            raise
        result["backends"].append(info)
        result["throughput"] += throughput
        result["latency"] += latency
        result["invariants"].append(invariants)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    errors = sum(c["errors"] for c in result["throughput"] + result["latency"])
    result["ok"] = errors == 0 and all(inv["ok"] for inv in result["invariants"])
    text = json.dumps(result)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    print_table(result)
    if not result["ok"]:
        print(f"\nFAILED: {errors} failed call(s) or a broken invariant", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
