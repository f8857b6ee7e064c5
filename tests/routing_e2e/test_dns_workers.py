"""Workers found by DNS (docs/deploy.md): a real DNS server (dnslib) answers a pool name with
the addresses of real `pixelrouter serve --demo` workers on 127.0.0.x, one port for all, as a
Kubernetes headless service does; a real `--no-engine` gateway routes to them.

While requests flow: a worker added to the name starts getting work; a worker removed from the
name, and another sent SIGTERM, lose no request; a name that stops resolving keeps the last
good set and says so on /ready. Every answered image is charged once, at the pool's price.
Two gateways on one PostgreSQL then share the pool: no request lost, the ledger equals what
was delivered.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from dbutil import fresh_postgres_url
from e2e.conftest import _free_port
from e2e.support import poll
from pixelrouter.store import Store
from processes.servers import Launcher, ServerProcess

from .dns import DNS
from .support import TIMEOUT, Gateway, provider_table, write_config

pytestmark = pytest.mark.e2e

POOL = "workers.pixelrouter.test"
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
PRICE = 0.012  # the pool's own price for a 64x64 image (first megapixel)
LOAD = 24  # requests in flight while workers leave


@dataclass
class Pool:
    dns: DNS
    workers: dict[str, ServerProcess]  # address → worker
    key: str  # the gateways' inference key, valid on every worker (one database)
    port: int


@pytest.fixture(scope="module")
def pool(launcher: Launcher) -> Iterator[Pool]:
    dns = DNS()
    port = _free_port()
    db = f"sqlite:///{launcher.root / 'workers.db'}"
    first = launcher.start("worker-2", db, host=ADDRESSES[0], port=port)  # migrates the database
    rest = [
        launcher.start(f"worker-{a[-1]}", db, host=a, port=port, wait=False) for a in ADDRESSES[1:]
    ]
    for worker in rest:
        launcher.wait_ready(worker)
    key, _ = first.create_key(name="gateways")
    try:
        yield Pool(dns, dict(zip(ADDRESSES, [first, *rest], strict=True)), key, port)
    finally:
        dns.stop()


def start_gateway(launcher: Launcher, pool: Pool, name: str, db_url: str) -> Gateway:
    config = write_config(
        launcher.root / f"{name}.toml",
        [
            provider_table(
                "workers",
                "pixelrouter",
                f"http://{POOL}:{pool.port}/api/v1",
                display_name="Workers",
                api_key="env:WORKER_KEY",
                price={"first_mp": PRICE, "extra_mp": 0.001},
                timeouts={"connect_s": 2, "first_byte_s": 30, "total_s": 60},
                discovery={"type": "dns", "interval_s": 0.5, "nameserver": pool.dns.nameserver},
            )
        ],
    )
    server = launcher.start(
        name,
        db_url,
        env={"WORKER_KEY": pool.key, "PIXELROUTER_REQUEST_TIMEOUT_S": "90"},
        args=("--no-engine", "--config", str(config)),
    )
    key, key_hash = server.create_key(name="dns-e2e")
    return Gateway(server, key, key_hash)


def ready_reason(gateway: Gateway) -> str:
    answer = httpx.get(f"{gateway.server.url}/ready", timeout=10)
    if answer.status_code != 200:
        return f"{answer.status_code}: {answer.text}"
    return str(answer.json()["providers"][0]["reason"])


def images_made(worker: ServerProcess) -> float:
    """Images the worker's engine made: its own /metrics."""
    text = httpx.get(f"{worker.url}/metrics", timeout=10).text
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r"^pixelrouter_images_generated_total(?:\{[^}]*\})? (\S+)$", text, re.M
        )
    )


def burst(gateway: Gateway, count: int, *, workers: int = 4) -> list[httpx.Response]:
    with httpx.Client(timeout=TIMEOUT) as client, ThreadPoolExecutor(workers) as threads:
        return list(threads.map(lambda _: gateway.images(client=client), range(count)))


def charged(gateway: Gateway) -> float:
    return gateway.key_usage()


def assert_all_served(responses: list[httpx.Response]) -> None:
    failed = [(r.status_code, r.text[:300]) for r in responses if r.status_code != 200]
    assert failed == [], failed


def test_workers_come_and_go_by_dns_and_no_request_is_lost(launcher: Launcher, pool: Pool) -> None:
    a, b, c = ADDRESSES
    pool.dns.zone.set(POOL, [a, b])
    gateway = start_gateway(launcher, pool, "gateway", f"sqlite:///{launcher.root / 'gw.db'}")
    poll("two workers ready", lambda: "2 of 2 worker(s) ready" in ready_reason(gateway))

    served: list[httpx.Response] = []
    before = {address: images_made(w) for address, w in pool.workers.items()}
    served += burst(gateway, 8)
    assert_all_served(served)
    assert images_made(pool.workers[c]) == before[c]  # not in DNS: no work

    # A worker added while requests flow starts getting work.
    pool.dns.zone.set(POOL, [a, b, c])
    poll("three workers ready", lambda: "3 of 3 worker(s) ready" in ready_reason(gateway))
    metrics = httpx.get(f"{gateway.server.url}/metrics", timeout=10).text
    assert f'pixelrouter_worker_queue_depth{{provider="workers",worker="{c}"}}' in metrics
    poll(
        "the new worker gets work",
        lambda: served.extend(burst(gateway, 6)) or images_made(pool.workers[c]) > before[c],
        deadline_s=120,
    )
    assert_all_served(served)

    # Under load: worker a leaves DNS, worker b gets SIGTERM (it drains). Nothing is lost.
    with httpx.Client(timeout=TIMEOUT) as client, ThreadPoolExecutor(6) as threads:
        flying = [
            threads.submit(gateway.images, client=client, size="256x256") for _ in range(LOAD)
        ]
        poll("load on the workers", lambda: sum(f.done() for f in flying) >= 2, deadline_s=60)
        pool.dns.zone.set(POOL, [b, c])
        pool.workers[b].process.send_signal(signal.SIGTERM)
        under_load = [f.result() for f in flying]
    assert_all_served(under_load)
    served += under_load
    pool.workers[b].process.wait(timeout=60)

    # The name stops resolving: the last good set is kept, and /ready says so.
    pool.dns.zone.drop(POOL)
    poll("the DNS failure is shown", lambda: "last good set" in ready_reason(gateway))
    after = burst(gateway, 4)
    assert_all_served(after)
    served += after

    # Every answered image charged once, at the pool's price.
    small = sum(1 for r in served if r.request.content.find(b'"64x64"') >= 0)
    large = len(served) - small
    expected = small * PRICE + large * PRICE  # both sizes are within the first megapixel
    assert charged(gateway) == pytest.approx(expected, abs=1e-9)


def test_a_fleet_of_two_gateways_loses_nothing_while_workers_change(
    launcher: Launcher, pool: Pool
) -> None:
    """Two gateways on one PostgreSQL, the pool found by DNS; mixed traffic on both while one
    worker drains (SIGTERM) and a new one appears: zero lost requests, every generation
    settled exactly once, the ledger equal to the prices of the delivered images."""
    live = [a for a, w in pool.workers.items() if w.process.poll() is None]
    assert len(live) == 2, live  # a and c, after the test above
    pool.dns.zone.set(POOL, live)
    fresh = "127.0.0.5"
    with fresh_postgres_url() as db_url:
        one = start_gateway(launcher, pool, "gateway-1", db_url)
        two = start_gateway(launcher, pool, "gateway-2", db_url)
        for gateway in (one, two):
            poll("workers ready", lambda g=gateway: "2 of 2 worker(s) ready" in ready_reason(g))
        newcomer = launcher.start(
            "worker-5",
            f"sqlite:///{launcher.root / 'workers.db'}",
            host=fresh,
            port=pool.port,
            wait=False,
        )
        sizes = ("64x64", "128x128", "256x256")
        with httpx.Client(timeout=TIMEOUT) as client, ThreadPoolExecutor(6) as threads:
            flying = [
                threads.submit(g.images, client=client, size=sizes[i % 3])
                for i in range(30)
                for g in (one, two)
            ]
            poll("traffic under way", lambda: sum(f.done() for f in flying) >= 4, deadline_s=60)
            pool.workers[live[0]].process.send_signal(signal.SIGTERM)  # drains
            launcher.wait_ready(newcomer)
            pool.dns.zone.set(POOL, [live[1], fresh])  # the drained one leaves, a new one joins
            responses = [f.result() for f in flying]
        assert_all_served(responses)
        pool.workers[live[0]].process.wait(timeout=60)
        for gateway in (one, two):
            poll("the newcomer is ready", lambda g=gateway: "2 of 2" in ready_reason(g))
        before = images_made(newcomer)
        poll(
            "the newcomer gets work",
            lambda: assert_all_served(burst(one, 4)) or images_made(newcomer) > before,
            deadline_s=120,
        )
        # Every generation settled exactly once, at the pool's price, in the shared ledger.
        with Store(db_url) as store:
            for response in responses:
                generation_id = response.headers["x-generation-id"]
                settles = [
                    e.amount_micro
                    for e in store.ledger_entries(generation_id=generation_id)
                    if e.kind == "settle"
                ]
                assert settles == [int(PRICE * 1_000_000)], generation_id
        # Each gateway's key: its own images, once (the newcomer's burst went through `one`).
        made_by_two = sum(
            1 for r in responses if r.url.host == "127.0.0.1" and two.api in str(r.url)
        )
        assert charged(two) == pytest.approx(made_by_two * PRICE, abs=1e-9)
        for gateway in (one, two):
            gateway.server.stop()
