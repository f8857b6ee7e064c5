"""A worker that fused one LoRA adapter (`[server] fuse_lora`, docs/loras.md "Fusing") beside
a plain worker, both real `pixelrouter serve --demo` processes, behind a real `--no-engine`
gateway that declares the adapter at the same default scale.

The fused worker says so in its `GET /api/v1/loras`, refuses a base request itself with a 400
that says what it serves, and the gateway sends it only requests for that adapter at that scale:
base requests all go to the plain worker. The same holds inside a pool of workers found by DNS.
"""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from typer.testing import CliRunner

from e2e.conftest import _free_port
from e2e.support import poll
from engine.loras_helpers import make_adapter
from pixelrouter.cli import app
from processes.servers import Launcher

from .dns import DNS
from .support import (
    MODEL,
    error_of,
    provider_table,
    start_gateway,
    worker_tables,
    write_config,
)
from .test_dns_workers import images_made, ready_reason

pytestmark = pytest.mark.e2e

FUSED, PLAIN = "Fused worker", "Plain worker"
INK = '[[loras]]\nname = "ink"\npath = "{path}"\ndefault_scale = 0.8\n'
FUSE = '[server]\nfuse_lora = "ink"\n'
POOL = "workers.pixelrouter.test"


def test_base_requests_never_reach_the_fused_worker(launcher: Launcher) -> None:
    ink = make_adapter(launcher.root / "adapters" / "ink", seed=1)
    fused_config = write_config(launcher.root / "fused.toml", [FUSE, INK.format(path=ink)])
    fused = launcher.start(
        "fused",
        f"sqlite:///{launcher.root / 'fused.db'}",
        args=("--demo", "--config", str(fused_config)),
        wait=False,
    )
    plain = launcher.start("plain", f"sqlite:///{launcher.root / 'plain.db'}", wait=False)
    for worker in (fused, plain):
        launcher.wait_ready(worker)
    key_fused, _ = fused.create_key(name="gateway")
    key_plain, _ = plain.create_key(name="gateway")

    # The worker itself: it says what it holds, and refuses what it cannot make.
    own = {"Authorization": f"Bearer {key_fused}"}
    rows = httpx.get(f"{fused.api}/loras", headers=own, timeout=30).json()["data"]
    assert [(r["name"], r["status"], r["fused"]) for r in rows] == [("ink", "ready", True)]
    listed = CliRunner().invoke(
        app, ["loras", "list", "--server", fused.url, "--api-key", key_fused]
    )
    assert listed.exit_code == 0 and "ready (fused)" in listed.output, listed.output
    body = {"model": MODEL, "prompt": "routing", "size": "64x64"}
    refused = httpx.post(f"{fused.api}/images", json=body, headers=own, timeout=60)
    assert refused.status_code == 400, refused.text
    assert f"serves only {MODEL}:ink" in error_of(refused)["message"]

    config = write_config(
        launcher.root / "gateway.toml",
        [
            *worker_tables(
                [
                    ("fused", FUSED, "FUSED_KEY", fused),
                    ("plain", PLAIN, "PLAIN_KEY", plain),
                ]
            ),
            INK.format(path="unused-on-a-gateway"),
        ],
    )
    gateway = start_gateway(launcher, config, env={"FUSED_KEY": key_fused, "PLAIN_KEY": key_plain})

    def served_by(response: httpx.Response) -> tuple[str, object]:
        assert response.status_code == 200, response.text
        record = gateway.generation(response)
        assert [a["status"] for a in record["provider_responses"]] == [200]  # no failed try
        return record["provider_name"], record["loras"]

    served: Counter[tuple[str, object]] = Counter()
    with httpx.Client() as client:
        for seed in range(6):  # the first one too, before the gateway polled either worker
            served[served_by(gateway.images(client=client, seed=seed))[0], "base"] += 1
            variant = gateway.images(client=client, seed=seed, model=f"{MODEL}:ink")
            assert served_by(variant) == (FUSED, [{"name": "ink", "scale": 0.8}])
            served[FUSED, "variant"] += 1
    assert served == {(PLAIN, "base"): 6, (FUSED, "variant"): 6}

    # The fused worker's image is the adapter's: it differs from the base one of that seed.
    styled = gateway.images(seed=3, loras=[{"name": "ink", "scale": 0.8}])
    base = gateway.images(seed=3)
    assert served_by(styled)[0] == FUSED and served_by(base)[0] == PLAIN
    assert styled.json()["data"][0]["b64_json"] != base.json()["data"][0]["b64_json"]

    # Another scale: no worker makes it. A base request allowed only the fused worker: none.
    other_scale = gateway.images(loras=[{"name": "ink", "scale": 0.5}])
    assert other_scale.status_code == 404, other_scale.text
    assert "No provider of" in error_of(other_scale)["message"]
    only_fused = gateway.images({"only": ["fused"]})
    assert only_fused.status_code == 404, only_fused.text
    assert error_of(only_fused)["metadata"]["reason"] == "no_endpoints_found"


def test_a_dns_pool_sends_its_fused_worker_only_the_adapter(launcher: Launcher) -> None:
    """One pool name, a fused worker and a plain one behind it (one port, as a headless
    service): the pool takes both kinds of request and hands each to the worker that makes it."""
    fused_address, plain_address = "127.0.0.2", "127.0.0.3"
    ink = make_adapter(launcher.root / "adapters" / "pool-ink", seed=1)
    fused_config = write_config(launcher.root / "pool-fused.toml", [FUSE, INK.format(path=ink)])
    port = _free_port()
    db = f"sqlite:///{launcher.root / 'pool-workers.db'}"  # one database: one key for both
    fused = launcher.start(
        "pool-fused",
        db,
        host=fused_address,
        port=port,
        args=("--demo", "--config", str(fused_config)),
    )
    plain = launcher.start("pool-plain", db, host=plain_address, port=port)
    key, _ = fused.create_key(name="gateway")
    dns = DNS()
    try:
        dns.zone.set(POOL, [fused_address, plain_address])
        pool = provider_table(
            "workers",
            "pixelrouter",
            f"http://{POOL}:{port}/api/v1",
            display_name="Workers",
            api_key="env:WORKER_KEY",
            timeouts={"connect_s": 2, "first_byte_s": 30, "total_s": 60},
            discovery={"type": "dns", "interval_s": 0.5, "nameserver": dns.nameserver},
        )
        config = write_config(
            launcher.root / "pool-gateway.toml", [pool, INK.format(path="unused-on-a-gateway")]
        )
        gateway = start_gateway(launcher, config, env={"WORKER_KEY": key}, name="pool-gateway")
        poll("both workers ready", lambda: "2 of 2 worker(s) ready" in ready_reason(gateway))
        with httpx.Client() as client:
            for seed in range(4):
                base = gateway.images(client=client, seed=seed)
                assert base.status_code == 200, base.text
                assert gateway.attempts(base) == [("Workers", 200)]
                variant = gateway.images(client=client, seed=seed, model=f"{MODEL}:ink")
                assert variant.status_code == 200, variant.text
                assert gateway.generation(variant)["loras"] == [{"name": "ink", "scale": 0.8}]
        assert (images_made(plain), images_made(fused)) == (4, 4)
        # Each went straight to its worker: the pool never tried the fused one with a base
        # request and fell back (which would also have kept it aside as failing for a while).
        assert "trying the next one" not in gateway.server.log()
    finally:
        dns.stop()
