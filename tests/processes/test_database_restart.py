"""PostgreSQL restarted under load (a real server of the test's own, a fast restart that drops
every connection): no request gets a 500, a refusal is a 503 with Retry-After, every answered
image keeps its record and its charge, nothing stays reserved, and the service recovers
without a restart of its own."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pgcluster import private_postgres
from pixelrouter.store import Store

from .servers import Launcher, closed_records

pytestmark = pytest.mark.e2e

REQUESTS = 48
WORKERS = 4
RESTART_AFTER = 12  # answers before the restart
TIMEOUT = httpx.Timeout(120, connect=10)
ENV = {
    "PIXELROUTER_REQUEST_TIMEOUT_S": "20",
    "PIXELROUTER_RESERVATION_GRACE_S": "1",
    "PIXELROUTER_SWEEP_INTERVAL_S": "0.5",
}


def test_a_postgresql_restart_under_load_loses_nothing(launcher: Launcher) -> None:
    with private_postgres() as cluster:
        server = launcher.start("restart", cluster.url, env=ENV)
        limited, limited_hash = server.create_key(limit=100.0)
        unlimited, unlimited_hash = server.create_key()
        answered = threading.Semaphore(0)

        def one(i: int) -> httpx.Response:
            key = limited if i % 2 else unlimited
            response = httpx.post(
                f"{server.api}/images",
                json={"prompt": f"restart {i}", "size": "64x64"},
                headers={"Authorization": f"Bearer {key}"},
                timeout=TIMEOUT,
            )
            answered.release()
            return response

        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(one, i) for i in range(REQUESTS)]
            for _ in range(RESTART_AFTER):
                answered.acquire(timeout=120)
            cluster.restart()
            responses = [f.result() for f in futures]

        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        for refused in (r for r in responses if r.status_code == 503):
            assert refused.headers.get("retry-after"), refused.text
            assert refused.json()["error"]["metadata"]["error_type"] == "provider_overloaded"
        assert statuses.count(200) >= RESTART_AFTER

        # It serves again without a restart of its own.
        again = httpx.post(
            f"{server.api}/images",
            json={"prompt": "after", "size": "64x64"},
            headers={"Authorization": f"Bearer {limited}"},
            timeout=TIMEOUT,
        )
        assert again.status_code == 200, again.text
        delivered = [
            r.headers["x-generation-id"] for r in [*responses, again] if r.status_code == 200
        ]

        with Store(cluster.url) as store:
            records = closed_records(store)
            for generation_id in delivered:
                record = records.get(generation_id)
                assert record is not None, f"{generation_id} was answered and has no record"
                assert record.state == "succeeded" and record.total_cost_micro == 14_000
            for key_hash in (limited_hash, unlimited_hash):
                charged = sum(
                    g.total_cost_micro
                    for g in records.values()
                    if g.key_hash == key_hash and g.state == "succeeded"
                )
                assert store.ledger_total(key_hash) == charged
            assert store.ledger_total() == 14_000 * len(delivered)
        assert "Traceback" not in server.log() or "database is out of reach" in server.log()
