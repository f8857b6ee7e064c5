"""Batches across real processes (docs/batches.md, "Exactly once"): a gateway killed with
SIGKILL mid-batch leaves its running items claimed; the process started after it puts them back
in the queue once their lease is over (their runs' reservations released) and finishes the
batch, with no item lost, none run to success twice and nothing charged twice. Two gateways on
one PostgreSQL database share one batch's items, each item run once."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from e2e.support import poll
from helpers import chat_image_body
from pixelrouter.keys import generate_key
from pixelrouter.store import GenerationRecord, Store
from pixelrouter.store.tables import batch_items

from .servers import Launcher, ServerProcess, closed_records

pytestmark = pytest.mark.e2e

MODEL = "black-forest-labs/flux.2-klein-4b"
PRICE = 14_000  # µ$ for one image of at most 1 MP
# A short lease, so the killed process's claims run out soon after the restart, and two items
# at a time, so the batch is still running when it is killed.
BATCH_ENV = {"PIXELROUTER_BATCH_LEASE_S": "3", "PIXELROUTER_BATCH_CONCURRENCY": "2"}
KILLED_ITEMS = 14
SHARED_ITEMS = 12
DEADLINE_S = 180.0
TIMEOUT = httpx.Timeout(60, connect=10)
TERMINAL = ("completed", "failed", "expired", "cancelled")


def _submit(server: ServerProcess, key: str, count: int) -> str:
    created = httpx.post(
        f"{server.api}/batches",
        json={
            "endpoint": "/v1/chat/completions",
            "model": MODEL,
            "requests": [
                {"custom_id": f"item-{i}", "body": chat_image_body(f"a fox, number {i}", seed=i)}
                for i in range(count)
            ],
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    )
    assert created.status_code == 202, created.text
    assert created.json()["request_counts"]["total"] == count
    return str(created.json()["id"])


def _batch(server: ServerProcess, key: str, batch_id: str) -> dict[str, Any]:
    got = httpx.get(
        f"{server.api}/batches/{batch_id}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    )
    assert got.status_code == 200, got.text
    return dict(got.json())


def _wait_ended(servers: list[ServerProcess], key: str, batch_id: str) -> dict[str, Any]:
    """The batch once it reached a terminal status, read from each server in turn."""
    deadline = time.monotonic() + DEADLINE_S
    turn = 0
    while True:
        batch = _batch(servers[turn % len(servers)], key, batch_id)
        if batch["status"] in TERMINAL:
            return batch
        assert time.monotonic() < deadline, batch["request_counts"]
        turn += 1
        time.sleep(0.25)


def _items(store: Store, batch_id: str) -> list[dict[str, Any]]:
    c = batch_items.c
    query = (
        select(
            c.idx,
            c.custom_id,
            c.status,
            c.claimed_by,
            c.generation_id,
            c.attempts,
            c.status_code,
            c.result,
        )
        .where(c.batch_id == batch_id)
        .order_by(c.idx)
    )
    with store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def _statuses(store: Store, batch_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in _items(store, batch_id):
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    return counts


def _pid(worker: str | None) -> int:
    """The process id in a runner's name (`<host>-<pid>-<random>`)."""
    assert worker, worker
    return int(worker.rsplit("-", 2)[1])


def _image_urls(result: dict[str, Any]) -> list[str]:
    images = result["response"]["body"]["choices"][0]["message"]["images"]
    return [image["image_url"]["url"] for image in images]


def _download(url: str) -> None:
    got = httpx.get(url, timeout=TIMEOUT)
    assert got.status_code == 200, (url, got.status_code, got.text[:200])
    Image.open(io.BytesIO(got.content)).verify()  # a whole image


def _check_books(
    store: Store, key_hash: str, items: list[dict[str, Any]]
) -> dict[str, GenerationRecord]:
    """Each succeeded item closed by one succeeded generation charged at its price, each failed
    one by a run that charged nothing; every other run of the key (an interrupted one) not
    succeeded, charged nothing, its reservation released; the ledger and the key's counters
    hold exactly one charge per succeeded item. The key's generations, by id."""
    records = {
        g.id: g for g in closed_records(store, deadline_s=60).values() if g.key_hash == key_hash
    }
    item_generations = [item["generation_id"] for item in items]
    assert None not in item_generations, items
    assert len(set(item_generations)) == len(items), items  # no run closed two items
    delivered = [item["generation_id"] for item in items if item["status"] == "succeeded"]
    succeeded = {g.id for g in records.values() if g.state == "succeeded"}
    assert succeeded == set(delivered), (succeeded, items)
    for generation_id in delivered:
        record = records[generation_id]
        assert (record.total_cost_micro, record.num_images) == (PRICE, 1), record
        reservation = store.get_reservation(generation_id)
        assert reservation is not None
        assert (reservation.state, reservation.settled_micro) == ("settled", PRICE), reservation
        settled = [
            e.amount_micro
            for e in store.ledger_entries(generation_id=generation_id)
            if e.kind == "settle"
        ]
        assert settled == [PRICE], (generation_id, settled)
    for record in records.values():
        if record.id in succeeded:
            continue
        assert record.state in ("failed", "cancelled"), record
        assert (record.total_cost_micro, record.num_images) == (0, 0), record
        reservation = store.get_reservation(record.id)
        if reservation is not None:
            assert (reservation.state, reservation.settled_micro) == ("released", 0), reservation
    # A run leaves a generation record once admitted: never more than the claims made.
    assert len(records) <= sum(item["attempts"] for item in items), (len(records), items)
    total = len(delivered) * PRICE
    assert store.ledger_total(key_hash) == total
    assert store.open_reservations(key_hash) == []
    balance = store.key_balance(key_hash)
    assert (balance.total_used, balance.reserved) == (total, 0), balance
    return records


def _check_key_usage(server: ServerProcess, key: str, count: int) -> None:
    view = httpx.get(f"{server.api}/key", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert view.status_code == 200, view.text
    assert round(view.json()["data"]["usage"] * 1e6) == count * PRICE, view.json()


def test_kill_9_mid_batch_and_restart_runs_every_item_once(db_url: str, launcher: Launcher) -> None:
    admin_key = generate_key()
    first = launcher.start("gateway", db_url, admin_key=admin_key, env=BATCH_ENV)
    key, key_hash = first.create_key(name="batch")
    batch_id = _submit(first, key, KILLED_ITEMS)

    with Store(db_url) as store:
        # Some items delivered, some running, some still queued: then kill.
        def mid_batch() -> dict[str, int] | None:
            counts = _statuses(store, batch_id)
            busy = counts.get("succeeded", 0) >= 2 and counts.get("running", 0) >= 1
            return counts if busy and counts.get("queued", 0) >= 4 else None

        poll("the batch half done", mid_batch, DEADLINE_S)
        first.kill9()
        # A commit the dead process had sent is written by PostgreSQL all the same: read its
        # claims once that is done. Nothing else changes them until a restart.
        time.sleep(1)
        before = _items(store, batch_id)
        interrupted = {item["idx"] for item in before if item["status"] == "running"}
        done_before = {item["idx"] for item in before if item["status"] == "succeeded"}
        assert len(done_before) >= 2, before
        assert all(_pid(before[idx]["claimed_by"]) == first.process.pid for idx in interrupted)
        assert store.ledger_total(key_hash) == len(done_before) * PRICE

        # The same name: the same data dir, so the same image store and its signing secret.
        second = launcher.start("gateway", db_url, admin_key=admin_key, env=BATCH_ENV)
        done = _wait_ended([second], key, batch_id)
        items = _items(store, batch_id)
        # The books first: whatever became of the items, nothing was charged twice or left
        # reserved, and each item was closed by one run.
        records = _check_books(store, key_hash, items)
        delivered = [item for item in items if item["status"] == "succeeded"]
        assert done["status"] == "completed", done
        assert done["request_counts"] == {
            "completed": len(delivered),
            "failed": KILLED_ITEMS - len(delivered),
            "total": KILLED_ITEMS,
        }
        assert round(done["usage"]["cost"] * 1e6) == len(delivered) * PRICE, done["usage"]
        results = {r["custom_id"]: r for r in done["results"]}
        assert set(results) == {item["custom_id"] for item in items}
        for item in delivered:
            result = results[item["custom_id"]]
            assert result["error"] is None and result["response"]["status_code"] == 200, result
            assert result["response"]["request_id"] == item["generation_id"], result
            urls = _image_urls(result)
            assert len(urls) == 1, result
            for url in urls:
                _download(url)
        assert all(item["attempts"] >= 1 for item in items), items

        # What was delivered before the kill stayed as it was; what the kill interrupted ran
        # again in the restarted process (a new claim, a new generation).
        for idx in done_before:
            assert items[idx]["generation_id"] == before[idx]["generation_id"], items[idx]
            assert _pid(items[idx]["claimed_by"]) == first.process.pid, items[idx]
        for idx in interrupted:
            assert items[idx]["attempts"] >= 2, items[idx]
            assert _pid(items[idx]["claimed_by"]) == second.process.pid, items[idx]
            old = before[idx]["generation_id"]
            assert items[idx]["generation_id"] != old, items[idx]
            if old in records:  # admitted before the kill: closed as interrupted, not charged
                assert records[old].state == "failed", records[old]
        if interrupted:
            assert any(item["attempts"] >= 2 for item in items), items
    _check_key_usage(second, key, len(delivered))

    # Every item delivered: the restarted runner claimed nothing before its engine was ready.
    failed = [item for item in items if item["status"] != "succeeded"]
    assert not failed, failed


def test_two_gateways_share_one_batch(
    postgres_url: str, launcher: Launcher, tmp_path: Path
) -> None:
    admin_key = generate_key()
    env = {
        "PIXELROUTER_BATCH_CONCURRENCY": "2",
        # One image store and one signing secret: either serves the other's URLs.
        "PIXELROUTER_STORAGE_URL": str(tmp_path / "shared-images"),
        "PIXELROUTER_STORAGE_SECRET": "batch-fleet-" + generate_key(),
    }
    gateways = [
        launcher.start(name, postgres_url, admin_key=admin_key, env=env, wait=False)
        for name in ("gateway-a", "gateway-b")
    ]
    for gateway in gateways:
        launcher.wait_ready(gateway)
    a, b = gateways
    key, key_hash = a.create_key(name="batch")
    batch_id = _submit(a, key, SHARED_ITEMS)

    done = _wait_ended(gateways, key, batch_id)
    assert done["status"] == "completed", done
    assert done["request_counts"] == {
        "completed": SHARED_ITEMS,
        "failed": 0,
        "total": SHARED_ITEMS,
    }
    assert round(done["usage"]["cost"] * 1e6) == SHARED_ITEMS * PRICE, done["usage"]

    with Store(postgres_url) as store:
        items = _items(store, batch_id)
        assert all(item["status"] == "succeeded" for item in items), items
        assert all(item["attempts"] == 1 for item in items), items  # none claimed twice
        ran_in = {_pid(item["claimed_by"]) for item in items}
        assert ran_in == {a.process.pid, b.process.pid}, items
        records = _check_books(store, key_hash, items)
        assert len(records) == SHARED_ITEMS, records  # no run beside the items' own

    # Every image is served by both gateways, whichever made it.
    results = _batch(b, key, batch_id)["results"]
    assert len(results) == SHARED_ITEMS
    for result in results:
        for url in _image_urls(result):
            _download(url)
            _download(url.replace(b.url, a.url, 1))
    for gateway in gateways:
        _check_key_usage(gateway, key, SHARED_ITEMS)
