"""Two real `pixelrouter serve --demo` workers behind a real `--no-engine` gateway (SPEC §4, §8:
"the engine scales out as more pixelrouter workers listed as providers").

Each worker has its own SQLite database and management key; the gateway reaches each with an
inference key made on that worker, given to the gateway as `api_key = "env:WORKER_?_KEY"`. Both
workers have the same price, so the gateway shares the load between them; provider preferences
pick one; and a worker killed with SIGKILL under load loses no request: what was on it falls
through to the other worker, and each request is charged once.

The tests of this module share the processes and run in order: the last one kills worker A.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from e2e.support import poll
from pixelrouter.store import Store
from processes.servers import Launcher, ServerProcess

from .support import MODEL, PRICE_1MP, TIMEOUT, Gateway, start_gateway, worker_tables, write_config

pytestmark = pytest.mark.e2e

A, B = "Worker A", "Worker B"
DEADLINE_S = 60  # the gateway's overall deadline
LOAD = 20  # concurrent requests when worker A is killed
LOAD_SIZE = "128x128"


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    key_a: str  # the gateway's inference key on worker A
    key_b: str
    gateway: Gateway


@pytest.fixture(scope="module")
def cluster(launcher: Launcher) -> Iterator[Cluster]:
    workers = [
        launcher.start(name, f"sqlite:///{launcher.root / f'{name}.db'}", wait=False)
        for name in ("worker-a", "worker-b")
    ]
    for worker in workers:  # started together: they load their demo pipelines in parallel
        launcher.wait_ready(worker)
    a, b = workers
    key_a, _ = a.create_key(name="gateway")
    key_b, _ = b.create_key(name="gateway")
    config = write_config(  # equal prices: the load is shared
        launcher.root / "gateway.toml",
        worker_tables([("worker-a", A, "WORKER_A_KEY", a), ("worker-b", B, "WORKER_B_KEY", b)]),
    )
    env = {
        "WORKER_A_KEY": key_a,
        "WORKER_B_KEY": key_b,
        "PIXELROUTER_REQUEST_TIMEOUT_S": str(DEADLINE_S),
    }
    yield Cluster(a, b, key_a, key_b, start_gateway(launcher, config, env=env))


def served_by(gateway: Gateway, response: httpx.Response) -> str:
    """The worker that served a successful answer, from the gateway's generation record; the
    record also lists that one attempt."""
    assert response.status_code == 200, response.text
    record = gateway.generation(response)
    assert record["state"] == "succeeded"
    assert [(a["provider_name"], a["status"]) for a in record["provider_responses"]] == [
        (record["provider_name"], 200)
    ]
    return record["provider_name"]


def usage_on(worker: ServerProcess, key: str) -> float:
    """What the gateway's key has spent on a worker (the worker's own ledger)."""
    found = httpx.get(f"{worker.api}/key", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert found.status_code == 200, found.text
    return float(found.json()["data"]["usage"])


def jobs_on(worker: ServerProcess, key: str) -> int:
    status = httpx.get(
        f"{worker.api}/engine/status", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert status.status_code == 200, status.text
    data = status.json()["data"]
    return int(data["running_batch"]) + int(data["queue_depth"])


def image_size(response: httpx.Response) -> tuple[int, int]:
    data = response.json()["data"]
    assert len(data) == 1
    return Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"]))).size


def test_equal_workers_share_the_load(cluster: Cluster) -> None:
    gateway = cluster.gateway
    spent_a, spent_b = usage_on(cluster.a, cluster.key_a), usage_on(cluster.b, cluster.key_b)
    served: Counter[str] = Counter()
    with httpx.Client(timeout=TIMEOUT) as client:
        for _ in range(20):
            response = gateway.images(client=client)
            assert image_size(response) == (64, 64)
            served[served_by(gateway, response)] += 1
    assert set(served) == {A, B}, served  # both used (all on one: p = 2 * 0.5**20)

    # Each worker charged the gateway's key for exactly the images it made.
    assert usage_on(cluster.a, cluster.key_a) - spent_a == pytest.approx(served[A] * 0.014)
    assert usage_on(cluster.b, cluster.key_b) - spent_b == pytest.approx(served[B] * 0.014)

    # The chat API names the worker in the response itself.
    response = httpx.post(
        f"{gateway.api}/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "a lighthouse"}],
            "image_config": {"image_size": "0.5K"},
        },
        headers=gateway.auth(),
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    assert response.json()["provider"] in (A, B)
    assert response.json()["provider"] == served_by(gateway, response)


def test_order_without_fallbacks_goes_to_the_named_worker(cluster: Cluster) -> None:
    gateway = cluster.gateway
    for slug, name in (("worker-b", B), ("worker-a", A), ("worker-b", B)):
        for _ in range(2):
            response = gateway.images({"order": [slug], "allow_fallbacks": False})
            assert served_by(gateway, response) == name


def test_only_and_ignore(cluster: Cluster) -> None:
    gateway = cluster.gateway
    for _ in range(3):
        assert served_by(gateway, gateway.images({"only": ["worker-a"]})) == A
        assert served_by(gateway, gateway.images({"ignore": ["worker-a"]})) == B
        assert served_by(gateway, gateway.images({"only": ["worker-b", "nobody"]})) == B
    response = gateway.images({"only": ["nobody"]})
    assert response.status_code == 404, response.text
    assert response.json()["error"]["metadata"]["error_type"] == "not_found"
    response = gateway.images({"ignore": ["worker-a", "worker-b"]})
    assert response.status_code == 404, response.text


def test_the_endpoints_list_both_workers(cluster: Cluster) -> None:
    gateway = cluster.gateway
    found = httpx.get(f"{gateway.api}/models/{MODEL}/endpoints", headers=gateway.auth(), timeout=30)
    assert found.status_code == 200, found.text
    endpoints = found.json()["data"]["endpoints"]
    assert sorted((e["tag"], e["provider_name"], e["status"]) for e in endpoints) == [
        ("worker-a", A, 0),
        ("worker-b", B, 0),
    ]
    assert endpoints[0]["pricing"] == endpoints[1]["pricing"]


def test_killing_a_worker_mid_load_loses_no_request(cluster: Cluster) -> None:
    """SIGKILL worker A while requests are on it: each of them falls through to worker B within
    the deadline, every request succeeds, and the gateway charges each one once."""
    gateway = cluster.gateway
    spent = gateway.key_usage()
    with ThreadPoolExecutor(LOAD) as pool:
        futures = [pool.submit(gateway.images, size=LOAD_SIZE) for _ in range(LOAD)]
        poll("worker A has requests of the load", lambda: jobs_on(cluster.a, cluster.key_a), 60)
        cluster.a.kill9()
        responses = [future.result(timeout=DEADLINE_S + 30) for future in futures]

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: LOAD}, [r.text[:300] for r in responses if r.status_code != 200]
    assert all(image_size(r) == (128, 128) for r in responses)
    ids = {r.headers["x-generation-id"] for r in responses}
    assert len(ids) == LOAD

    records = [gateway.generation(r) for r in responses]
    fell_through = 0
    for record in records:
        attempts = [(a["provider_name"], a["status"]) for a in record["provider_responses"]]
        assert record["state"] == "succeeded" and attempts[-1] == (record["provider_name"], 200)
        assert all(status >= 500 for _, status in attempts[:-1]), attempts
        if attempts[:-1]:
            # Only A failed, and what was on it was served by B.
            assert attempts == [(A, attempts[0][1]), (B, 200)], attempts
            fell_through += 1
        assert record["total_cost"] == pytest.approx(PRICE_1MP / 1e6)
    assert fell_through >= 1, [r["provider_responses"] for r in records]

    # The ledger: one settlement of one image per request, nothing for the failed attempts.
    with Store(gateway.server.db_url) as store:
        for generation_id in ids:
            settled = [
                e.amount_micro
                for e in store.ledger_entries(generation_id=generation_id)
                if e.kind == "settle"
            ]
            assert settled == [PRICE_1MP], (generation_id, settled)
    assert gateway.key_usage() - spent == pytest.approx(LOAD * PRICE_1MP / 1e6)

    # Afterwards B takes everything, and the gateway's endpoints list shows A as down once its
    # status poll (at most once a second, while routing) found it gone.
    def a_is_down() -> bool:
        assert served_by(gateway, gateway.images()) == B
        found = httpx.get(
            f"{gateway.api}/models/{MODEL}/endpoints", headers=gateway.auth(), timeout=30
        )
        status = {e["tag"]: e["status"] for e in found.json()["data"]["endpoints"]}
        return status == {"worker-a": -2, "worker-b": 0}

    poll("worker A shown as down", a_is_down, 30)
