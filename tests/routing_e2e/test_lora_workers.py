"""LoRA adapters across workers: two real `pixelrouter serve --demo` workers, only worker A
configured with the adapter 'ink' (made with PEFT here, saved in diffusers' format), behind a
real `--no-engine` gateway that declares 'ink' in its own `[[loras]]` (docs/loras.md,
"Routing to workers").

The gateway learns from each worker's `GET /api/v1/loras` which adapters it holds: a request
with 'ink' always lands on worker A, requests without adapters spread over both, and a request
for an adapter no worker holds is a 4xx naming it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from engine.loras_helpers import make_adapter
from processes.servers import Launcher, ServerProcess

from .support import Gateway, error_of, start_gateway, worker_tables, write_config

pytestmark = pytest.mark.e2e

A, B = "Worker A", "Worker B"


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    gateway: Gateway


def lora_table(name: str, path: str) -> str:
    return f'[[loras]]\nname = "{name}"\npath = "{path}"\n'


@pytest.fixture(scope="module")
def cluster(launcher: Launcher) -> Iterator[Cluster]:
    ink = make_adapter(launcher.root / "adapters" / "ink", seed=1)
    worker_a_config = write_config(launcher.root / "worker-a.toml", [lora_table("ink", str(ink))])
    a = launcher.start(
        "worker-a",
        f"sqlite:///{launcher.root / 'worker-a.db'}",
        args=("--demo", "--config", str(worker_a_config)),
        wait=False,
    )
    b = launcher.start("worker-b", f"sqlite:///{launcher.root / 'worker-b.db'}", wait=False)
    for worker in (a, b):
        launcher.wait_ready(worker)
    key_a, _ = a.create_key(name="gateway")
    key_b, _ = b.create_key(name="gateway")
    config = write_config(
        launcher.root / "gateway.toml",
        [
            *worker_tables(
                [("worker-a", A, "WORKER_A_KEY", a), ("worker-b", B, "WORKER_B_KEY", b)]
            ),
            # The gateway has no engine: it reads no adapter file, but names the adapters a
            # request may ask for ('nowhere' is held by no worker).
            lora_table("ink", str(ink)),
            lora_table("nowhere", "adapters/nowhere"),
        ],
    )
    env = {"WORKER_A_KEY": key_a, "WORKER_B_KEY": key_b}
    yield Cluster(a, b, start_gateway(launcher, config, env=env))


def served_by(gateway: Gateway, response: httpx.Response) -> tuple[str, list[dict[str, object]]]:
    """The worker that served a successful answer and the adapters on the gateway's record."""
    assert response.status_code == 200, response.text
    record = gateway.generation(response)
    assert record["state"] == "succeeded"
    assert [(a["provider_name"], a["status"]) for a in record["provider_responses"]] == [
        (record["provider_name"], 200)
    ]
    return record["provider_name"], record["loras"]


def test_the_workers_report_what_they_hold(cluster: Cluster) -> None:
    gateway = cluster.gateway
    found = httpx.get(f"{gateway.api}/loras", headers=gateway.auth(), timeout=30)
    assert found.status_code == 200, found.text
    assert {r["name"]: r["status"] for r in found.json()["data"]} == {
        "ink": "unchecked",
        "nowhere": "unchecked",
    }
    key_a, _ = cluster.a.create_key(name="look")
    on_a = httpx.get(
        f"{cluster.a.api}/loras", headers={"Authorization": f"Bearer {key_a}"}, timeout=30
    )
    assert [(r["name"], r["status"]) for r in on_a.json()["data"]] == [("ink", "ready")]


def test_requests_with_the_adapter_land_on_the_worker_that_holds_it(cluster: Cluster) -> None:
    gateway = cluster.gateway
    with httpx.Client() as client:
        for seed in range(10):
            response = gateway.images(
                client=client, seed=seed, loras=[{"name": "ink", "scale": 0.7}]
            )
            assert served_by(gateway, response) == (A, [{"name": "ink", "scale": 0.7}])
        # A model variant names the adapter too.
        response = gateway.images(client=client, model="black-forest-labs/flux.2-klein-4b:ink")
        assert served_by(gateway, response) == (A, [{"name": "ink", "scale": 1.0}])


def test_the_adapter_changes_the_image(cluster: Cluster) -> None:
    """The worker applied it: the same seed without the adapter, sent to worker A, differs."""
    gateway = cluster.gateway
    styled = gateway.images(seed=4, loras=[{"name": "ink"}])
    plain = gateway.images({"only": ["worker-a"]}, seed=4)
    assert served_by(gateway, styled)[0] == served_by(gateway, plain)[0] == A
    assert styled.json()["data"][0]["b64_json"] != plain.json()["data"][0]["b64_json"]


def test_requests_without_adapters_spread(cluster: Cluster) -> None:
    gateway = cluster.gateway
    served: Counter[str] = Counter()
    with httpx.Client() as client:
        for _ in range(20):
            name, loras = served_by(gateway, gateway.images(client=client))
            assert loras == []
            served[name] += 1
    assert set(served) == {A, B}, served  # both used (all on one: p = 2 * 0.5**20)


def test_an_adapter_no_worker_holds_is_a_4xx_naming_it(cluster: Cluster) -> None:
    gateway = cluster.gateway
    # Declared on the gateway, held by no worker: no provider can make it.
    response = gateway.images(loras=[{"name": "nowhere"}])
    error = error_of(response)
    assert response.status_code == 404, response.text
    assert "nowhere" in error["message"] and "LoRA adapter" in error["message"]
    assert error["metadata"]["error_type"] == "not_found"
    assert error["metadata"]["loras"] == ["nowhere"]
    # Held by worker A, but the request's preferences leave only worker B.
    response = gateway.images({"only": ["worker-b"]}, loras=[{"name": "ink"}])
    assert response.status_code == 404, response.text
    # Not declared on the gateway at all: the edge's 400 names it and what exists.
    response = gateway.images(loras=[{"name": "unheard"}])
    error = error_of(response)
    assert response.status_code == 400, response.text
    assert "unknown LoRA adapter 'unheard'" in error["message"]
    assert error["metadata"]["error_type"] == "invalid_request"
