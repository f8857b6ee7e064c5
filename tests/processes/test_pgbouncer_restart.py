"""A gateway behind PgBouncer in transaction pooling mode, under load: PgBouncer is killed
(SIGKILL: every connection drops mid-transaction) and started again on its port, then the
PostgreSQL server behind it is restarted. No request gets a 500, a refusal is a 503 with
Retry-After, every answered image keeps its record and exactly one charge, no reservation is
lost or left open, and the gateway recovers without a restart of its own."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pgbouncer import pgbouncer
from pgcluster import private_postgres
from pixelrouter.store import Store

from .servers import Launcher, closed_records

pytestmark = pytest.mark.e2e

REQUESTS = 60
WORKERS = 6
KILL_AFTER = 12  # answers before PgBouncer is killed
RESTART_AFTER = 30  # answers before PostgreSQL restarts
PRICE = 14_000
TIMEOUT = httpx.Timeout(120, connect=10)
ENV = {
    "PIXELROUTER_REQUEST_TIMEOUT_S": "20",
    "PIXELROUTER_RESERVATION_GRACE_S": "1",
    "PIXELROUTER_SWEEP_INTERVAL_S": "0.5",
}


def test_pgbouncer_killed_and_postgresql_restarted_under_load(launcher: Launcher) -> None:
    with private_postgres() as cluster, pgbouncer(upstream_port=cluster.port) as bouncer:
        server = launcher.start("bounced", bouncer.url_for(cluster.url), env=ENV)
        limited, limited_hash = server.create_key(limit=100.0)
        unlimited, unlimited_hash = server.create_key()
        answered = threading.Semaphore(0)

        def one(i: int) -> httpx.Response:
            key = limited if i % 2 else unlimited
            response = httpx.post(
                f"{server.api}/images",
                json={"prompt": f"bounced {i}", "size": "64x64"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=TIMEOUT,
            )
            answered.release()
            return response

        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(one, i) for i in range(REQUESTS)]
            for _ in range(KILL_AFTER):
                answered.acquire(timeout=120)
            bouncer.kill()
            time.sleep(0.5)
            bouncer.start()
            for _ in range(RESTART_AFTER - KILL_AFTER):
                answered.acquire(timeout=120)
            cluster.restart()
            responses = [f.result() for f in futures]

        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, Counter(statuses)
        for refused in (r for r in responses if r.status_code == 503):
            assert refused.headers.get("retry-after"), refused.text
        assert statuses.count(200) >= KILL_AFTER

        # It serves again without a restart of its own, on both kinds of key: within seconds,
        # as a client that honours Retry-After sees it (the first requests may still meet
        # server connections PgBouncer lost in the restart, and are 503s with Retry-After).
        def after(key: str) -> httpx.Response:
            deadline = time.monotonic() + 30
            while True:
                answer = httpx.post(
                    f"{server.api}/images",
                    json={"prompt": "after", "size": "64x64"},
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=TIMEOUT,
                )
                if answer.status_code != 503 or time.monotonic() > deadline:
                    return answer
                assert answer.headers.get("retry-after"), answer.text
                time.sleep(1)

        again = [after(key) for key in (limited, unlimited)]
        assert [r.status_code for r in again] == [200, 200], [r.text for r in again]
        delivered = [
            r.headers["x-generation-id"] for r in [*responses, *again] if r.status_code == 200
        ]

        with Store(cluster.url) as store:
            records = closed_records(store)
            for generation_id in delivered:
                record = records.get(generation_id)
                assert record is not None, f"{generation_id} was answered and has no record"
                assert record.state == "succeeded", record
                assert record.total_cost_micro == PRICE
                # Exactly one charge: one settle entry of the price, never two.
                settles = [
                    e.amount_micro
                    for e in store.ledger_entries(generation_id=generation_id)
                    if e.kind == "settle"
                ]
                assert settles == [PRICE], (generation_id, settles)
            for key_hash in (limited_hash, unlimited_hash):
                charged = sum(
                    g.total_cost_micro
                    for g in records.values()
                    if g.key_hash == key_hash and g.state == "succeeded"
                )
                assert store.ledger_total(key_hash) == charged
                balance = store.key_balance(key_hash)
                assert balance.total_used == charged and balance.reserved == 0
            # Every reservation made was closed exactly once: reserve = settle + release.
            for reservation_id in {g.id for g in records.values() if g.key_hash == limited_hash}:
                entries = {
                    e.kind: e.amount_micro
                    for e in store.ledger_entries(generation_id=reservation_id)
                }
                if entries:
                    assert entries["reserve"] == entries["settle"] + entries["release"], entries
            assert store.ledger_total() == PRICE * len(delivered)
