"""Graceful shutdown of a real `pixelrouter serve --demo` process (docs/reliability.md).

SIGTERM starts a drain: `/ready` answers 503, new generations get 503 with `Retry-After`, other
requests still work, and the generations in flight finish (charged once) or, past the drain
bound, are cancelled (released, nothing charged). The process then exits; no reservation is
left open and no record pending, and a restart on the same database finds every record and
every charge as it was."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from e2e.support import MODEL, poll
from pixelrouter.keys import generate_key
from pixelrouter.store import Store
from pixelrouter.store.records import FINISHED_STATES

from .servers import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

TIMEOUT = httpx.Timeout(300, connect=10)
# On top of the drain bound: cancelled work recording itself, uvicorn's and the engine's
# shutdown, on a slow and busy 2-core machine.
EXIT_GRACE_S = 60.0
PRICE_64 = 14_000  # 64x64: one megapixel's price
PRICE_2K = 17_000  # 2048x2048: four megapixels


@dataclass
class Outcome:
    """What a client got: status, headers, and the JSON body or the SSE payloads."""

    status: int
    headers: httpx.Headers
    body: Any
    generation_id: str


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _images(server: ServerProcess, key: str, size: str, steps: int | None = None) -> Outcome:
    body: dict[str, Any] = {"prompt": "drain", "size": size}
    if steps is not None:
        body["steps"] = steps
    response = httpx.post(f"{server.api}/images", json=body, headers=_auth(key), timeout=TIMEOUT)
    return Outcome(
        response.status_code, response.headers, response.json(), response.headers["x-generation-id"]
    )


def _stream(server: ServerProcess, key: str, path: str, body: dict[str, Any]) -> Outcome:
    """A streaming request; the body is its `data:` payloads, `[DONE]` kept as the string."""
    with httpx.stream(
        "POST", f"{server.api}{path}", json=body, headers=_auth(key), timeout=TIMEOUT
    ) as response:
        text = response.read().decode()
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        return Outcome(
            response.status_code,
            response.headers,
            json.loads(text),
            response.headers["x-generation-id"],
        )
    payloads: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return Outcome(
        response.status_code, response.headers, payloads, response.headers["x-generation-id"]
    )


def _chat_stream(server: ServerProcess, key: str, steps: int) -> Outcome:
    return _stream(
        server,
        key,
        "/chat/completions",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "drain"}],
            "stream": True,
            "image_config": {"image_size": "2K", "steps": steps},
        },
    )


def _openai_stream(server: ServerProcess, key: str, steps: int) -> Outcome:
    return _stream(
        server,
        key,
        "/images/generations",
        {
            "model": MODEL,
            "prompt": "drain",
            "size": "2048x2048",
            "stream": True,
            "provider": {"options": {"local": {"steps": steps}}},
        },
    )


def _jobs_in_engine(server: ServerProcess, key: str) -> int:
    status = httpx.get(f"{server.api}/engine/status", headers=_auth(key), timeout=10)
    assert status.status_code == 200, status.text
    data = status.json()["data"]
    return int(data["running_batch"]) + int(data["queue_depth"])


def _ready_status(server: ServerProcess) -> httpx.Response | None:
    try:
        return httpx.get(f"{server.url}/ready", timeout=10)
    except httpx.TransportError:
        return None


def _wait_draining(server: ServerProcess) -> httpx.Response:
    def draining() -> httpx.Response | None:
        ready = _ready_status(server)
        return ready if ready is not None and ready.status_code == 503 else None

    ready: httpx.Response = poll("/ready answering 503 after SIGTERM", draining, 30)
    error = ready.json()["error"]
    assert error["code"] == 503
    assert error["metadata"]["error_type"] == "provider_overloaded"
    assert error["metadata"]["reason"] == "draining"
    assert "shutting down" in error["message"]
    return ready


def _wait_exit(server: ServerProcess, since: float, bound_s: float) -> float:
    """Seconds from `since` until the process exited; fails past the bound."""
    server.process.wait(timeout=bound_s + EXIT_GRACE_S)
    took = time.monotonic() - since
    assert server.process.returncode in (0, -signal.SIGTERM), server.process.returncode
    assert took <= bound_s + EXIT_GRACE_S, took
    return took


def _check_refused(server: ServerProcess, key: str) -> None:
    """A new generation while draining: 503 with Retry-After, plain and streaming."""
    refused = _images(server, key, "64x64")
    assert refused.status == 503, refused.body
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.body["error"]
    assert (error["code"], error["metadata"]["error_type"]) == (503, "provider_overloaded")
    assert error["metadata"]["reason"] == "draining"
    streamed = _chat_stream(server, key, steps=1)
    assert streamed.status == 503, streamed.body
    assert streamed.body["error"]["metadata"]["reason"] == "draining"
    assert "retry-after" in streamed.headers


def _check_ledger(store: Store, key_hash: str, delivered: dict[str, int]) -> None:
    """Nothing open, every record final, and charges equal to the delivered images' prices
    (`delivered`: generation id -> µ$ the client was told)."""
    assert store.open_reservations() == []
    records = store.list_generations(key_hash, limit=1000)
    assert all(g.state in FINISHED_STATES for g in records), [(g.id, g.state) for g in records]
    succeeded = {g.id: g.total_cost_micro for g in records if g.state == "succeeded"}
    assert succeeded == delivered
    assert all(g.total_cost_micro == 0 for g in records if g.state != "succeeded")
    for record in records:
        reservation = store.get_reservation(record.id)
        assert reservation is not None, record.id
        expected = ("settled", delivered[record.id]) if record.id in delivered else ("released", 0)
        assert (reservation.state, reservation.settled_micro) == expected, record
    total = sum(delivered.values())
    assert store.ledger_total(key_hash) == total
    balance = store.key_balance(key_hash)
    assert (balance.total_used, balance.reserved) == (total, 0)


def _cost_micro(usage: dict[str, Any]) -> int:
    return round(usage["cost"] * 1_000_000)


def _check_restart(
    launcher: Launcher, db_url: str, admin_key: str, key: str, ids: list[str], total: int
) -> None:
    """A new process on the same database finds every record and charge, and serves."""
    with Store(db_url) as store:
        before = {g.id: g for g in store.list_generations(limit=1000)}
    restarted = launcher.start("restarted", db_url, admin_key=admin_key)
    for generation_id in ids:
        got = httpx.get(
            f"{restarted.api}/generation",
            params={"id": generation_id},
            headers=_auth(key),
            timeout=30,
        )
        assert got.status_code == 200, got.text
        data = got.json()["data"]
        assert data["total_cost"] == pytest.approx(before[generation_id].total_cost_micro / 1e6)
    view = httpx.get(f"{restarted.api}/key", headers=_auth(key), timeout=30).json()["data"]
    assert view["usage"] == pytest.approx(total / 1e6)
    fresh = _images(restarted, key, "64x64")
    assert fresh.status == 200, fresh.body
    with Store(db_url) as store:
        # The settlement is written just after the answer (docs/billing.md); API readers wait
        # for it, a direct read of the database polls.
        poll("the fresh generation's settlement", lambda: not store.open_reservations())
        after = {g.id: g for g in store.list_generations(limit=1000)}
        assert store.ledger_total() == total + PRICE_64
        assert store.open_reservations() == []
    assert set(after) == set(before) | {fresh.generation_id}
    for generation_id, record in before.items():
        kept = after[generation_id]
        assert (kept.state, kept.total_cost_micro, kept.num_images) == (
            record.state,
            record.total_cost_micro,
            record.num_images,
        )


def _in_flight(
    pool: ThreadPoolExecutor, calls: list[Callable[[], Outcome]], server: ServerProcess, key: str
) -> list[Future[Outcome]]:
    """Start the calls and wait until every one of them is a job in the engine."""
    futures = [pool.submit(call) for call in calls]
    poll(
        "the slow generations in the engine",
        lambda: _jobs_in_engine(server, key) >= len(calls) or any(f.done() for f in futures),
        120,
    )
    assert not any(f.done() for f in futures), [f.result() for f in futures if f.done()]
    return futures


def test_sigterm_drains_in_flight_work_and_a_restart_loses_nothing(
    db_url: str, launcher: Launcher
) -> None:
    bound = 240.0  # ample: the work in flight must finish, even on a busy machine
    admin_key = generate_key()
    server = launcher.start(
        "draining", db_url, admin_key=admin_key, args=("--demo", "--drain-timeout", str(bound))
    )
    key, key_hash = server.create_key(limit=1.0)
    delivered: dict[str, int] = {}
    for _ in range(2):
        done = _images(server, key, "64x64")
        assert done.status == 200, done.body
        delivered[done.generation_id] = _cost_micro(done.body["usage"])

    with ThreadPoolExecutor(3) as pool:
        # 2048x2048 at 8 steps: several seconds each even alone on an idle machine.
        slow = _in_flight(
            pool,
            [
                lambda: _images(server, key, "2048x2048", steps=8),
                lambda: _chat_stream(server, key, steps=8),
            ],
            server,
            key,
        )
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        _wait_draining(server)
        still_running = sum(not f.done() for f in slow)
        _check_refused(server, key)
        # Everything but a generation still works while draining.
        for generation_id in delivered:
            got = httpx.get(
                f"{server.api}/generation", params={"id": generation_id}, headers=_auth(key)
            )
            assert got.status_code == 200, got.text
        assert httpx.get(f"{server.api}/key", headers=_auth(key)).status_code == 200
        assert httpx.get(f"{server.url}/health").status_code == 200
        outcomes = [f.result(timeout=bound + EXIT_GRACE_S) for f in slow]
    assert still_running >= 1, "the slow generations ended before the drain was seen"

    plain, streamed = outcomes
    assert plain.status == 200, plain.body
    assert len(plain.body["data"]) == 1
    delivered[plain.generation_id] = _cost_micro(plain.body["usage"])
    assert streamed.status == 200
    assert streamed.body[-1] == "[DONE]"
    assert not any(isinstance(p, dict) and "error" in p for p in streamed.body), streamed.body
    images = [
        image
        for p in streamed.body[:-1]
        for choice in p["choices"]
        for image in choice["delta"].get("images", [])
    ]
    assert len(images) == 1
    delivered[streamed.generation_id] = _cost_micro(streamed.body[-2]["usage"])
    assert sorted(delivered.values()) == [PRICE_64, PRICE_64, PRICE_2K, PRICE_2K]

    _wait_exit(server, signalled, bound)
    assert "drained in" in server.log()
    with Store(db_url) as store:
        _check_ledger(store, key_hash, delivered)
    _check_restart(launcher, db_url, admin_key, key, list(delivered), total=sum(delivered.values()))


def test_drain_bound_cancels_and_releases(db_url: str, launcher: Launcher) -> None:
    bound = 5.0
    admin_key = generate_key()
    server = launcher.start(
        "cut", db_url, admin_key=admin_key, args=("--demo", "--drain-timeout", str(bound))
    )
    key, key_hash = server.create_key(limit=1.0)
    done = _images(server, key, "64x64")
    assert done.status == 200, done.body
    delivered = {done.generation_id: _cost_micro(done.body["usage"])}

    with ThreadPoolExecutor(3) as pool:
        # 60 steps at 2048x2048: minutes on a CPU, so never done within the bound.
        slow = _in_flight(
            pool,
            [
                lambda: _images(server, key, "2048x2048", steps=60),
                lambda: _chat_stream(server, key, steps=60),
                lambda: _openai_stream(server, key, steps=60),
            ],
            server,
            key,
        )
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        _wait_draining(server)
        plain, chat, openai = [f.result(timeout=bound + EXIT_GRACE_S) for f in slow]
    answered = time.monotonic() - signalled

    # Cancelled at the bound: a 503 before the response started, an error event in a stream.
    assert plain.status == 503, plain.body
    assert plain.body["error"]["metadata"]["reason"] == "shutdown"
    assert "nothing was charged" in plain.body["error"]["message"]
    assert plain.headers["retry-after"] == "1"
    assert chat.status == 200 and chat.body[-1] == "[DONE]"
    last_chunk = chat.body[-2]
    assert last_chunk["id"] == chat.generation_id
    assert last_chunk["model"] == MODEL
    assert last_chunk["choices"][0]["finish_reason"] == "error"
    assert last_chunk["error"]["code"] == 503
    assert openai.status == 200 and openai.body[-1] == "[DONE]"
    assert openai.body[-2]["type"] == "error"
    assert openai.body[-2]["error"]["code"] == "503"
    assert answered <= bound + EXIT_GRACE_S, answered

    _wait_exit(server, signalled, bound)
    log = server.log()
    assert "cancels 3 generation(s)" in log
    assert "not recorded" not in log
    with Store(db_url) as store:
        _check_ledger(store, key_hash, delivered)
        for outcome in (plain, chat, openai):
            record = store.get_generation(outcome.generation_id)
            assert record is not None
            assert (record.state, record.cancelled, record.num_images) == ("cancelled", True, 0)
    _check_restart(
        launcher,
        db_url,
        admin_key,
        key,
        [done.generation_id, plain.generation_id, chat.generation_id, openai.generation_id],
        total=sum(delivered.values()),
    )


def test_a_second_signal_cuts_the_drain_short(tmp_path: Any, launcher: Launcher) -> None:
    bound = 600.0  # never reached: the second signal ends the wait
    db_url = f"sqlite:///{tmp_path / 'px.db'}"
    server = launcher.start("twice", db_url, args=("--demo", "--drain-timeout", str(bound)))
    key, key_hash = server.create_key(limit=1.0)
    with ThreadPoolExecutor(1) as pool:
        (slow,) = _in_flight(
            pool, [lambda: _images(server, key, "2048x2048", steps=60)], server, key
        )
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        _wait_draining(server)
        assert not slow.done()
        server.process.send_signal(signal.SIGINT)
        outcome = slow.result(timeout=EXIT_GRACE_S)
    assert outcome.status == 503, outcome.body
    assert outcome.body["error"]["metadata"]["reason"] == "shutdown"
    server.process.wait(timeout=EXIT_GRACE_S)
    assert time.monotonic() - signalled < EXIT_GRACE_S
    assert "a second stop signal cancels 1 generation(s)" in server.log()
    with Store(db_url) as store:
        _check_ledger(store, key_hash, {})
