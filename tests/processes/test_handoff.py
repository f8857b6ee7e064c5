"""What the client got decides what is charged, against a real server over TCP: a client that
closes part way through an answer is not charged for the images it never received; and a
delivered image always has a record, even when the server is killed the moment it answered.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from dbutil import sqlite_url
from e2e.support import poll
from pixelrouter.store import Store

from .servers import Launcher, ServerProcess

pytestmark = pytest.mark.e2e

BIG = "1024x1024"  # noise PNGs of about 3 MB: four of them outgrow the sockets' buffers
PRICE = 14_000
TIMEOUT = httpx.Timeout(300, connect=10)


def _post_raw(server: ServerProcess, key: str, body: dict[str, object]) -> socket.socket:
    """Send a generation request by hand and return the socket, nothing read yet."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=300)
    sock.sendall(
        b"POST /api/v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def _read_until(sock: socket.socket, marker: bytes, extra: int = 0) -> bytes:
    """Read until `marker` has arrived, and then `extra` bytes more."""
    data = b""
    while marker not in data or len(data) < data.index(marker) + len(marker) + extra:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed first; got {data[:300]!r}"
        data += chunk
    return data


def _abort(sock: socket.socket) -> None:
    """Close with unread data: the kernel answers the server with a reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def _generation_id(head: bytes) -> str:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-generation-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError(f"no generation id in {head[:500]!r}")


def _closed_record(server: ServerProcess, generation_id: str) -> dict[str, object]:
    def record() -> dict[str, object] | None:
        r = httpx.get(
            f"{server.api}/generation",
            params={"id": generation_id},
            headers=server.admin(),
            timeout=30,
        )
        data = r.json().get("data") if r.status_code == 200 else None
        return data if data and data["state"] != "pending" else None

    return poll(f"generation {generation_id} closed", record, 120)


def test_a_client_that_leaves_is_charged_only_for_what_it_received(
    tmp_path, launcher: Launcher
) -> None:
    server = launcher.start("handoff", sqlite_url(tmp_path))
    key, key_hash = server.create_key()

    # Streamed: the client reads 6.8 KB of the first image's event, then leaves.
    sock = _post_raw(server, key, {"prompt": "four", "size": BIG, "n": 4, "stream": True})
    head = _read_until(sock, b"image_generation.completed", extra=6_800)
    streamed_id = _generation_id(head)
    _abort(sock)
    streamed = _closed_record(server, streamed_id)
    assert (streamed["total_cost"], streamed["num_media_completion"]) == (0, 0), streamed

    # Whole body: the client reads the headers, then leaves.
    sock = _post_raw(server, key, {"prompt": "four", "size": BIG, "n": 4})
    head = _read_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    whole_id = _generation_id(head)
    _abort(sock)
    whole = _closed_record(server, whole_id)
    assert (whole["total_cost"], whole["num_media_completion"]) == (0, 0), whole
    assert whole["cancelled"] is True

    # A client that reads everything is charged for everything.
    done = httpx.post(
        f"{server.api}/images",
        json={"prompt": "four", "size": BIG, "n": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    )
    assert done.status_code == 200
    paid = _closed_record(server, done.headers["x-generation-id"])
    assert (paid["total_cost"], paid["num_media_completion"]) == (4 * PRICE / 1e6, 4)

    # The ledger agrees, and the operator's cost is counted for /metrics.
    with Store(server.db_url) as store:
        assert store.ledger_total(key_hash) == 4 * PRICE
        left = [store.get_generation(streamed_id), store.get_generation(whole_id)]
        assert [g.undelivered_images for g in left if g is not None] == [4, 4]
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    assert 'pixelrouter_images_undelivered_total{provider="local"} 8.0' in metrics


def test_kill_9_right_after_the_answer_leaves_a_record(tmp_path, launcher: Launcher) -> None:
    """A key without a limit reserves nothing, but its pending record is written before the
    answer goes out: killed the moment the answer arrived, the server leaves the record, which
    the next process closes ("outcome unknown, not charged") unless it was closed already."""
    db = sqlite_url(tmp_path)
    env = {
        "PIXELROUTER_REQUEST_TIMEOUT_S": "5",
        "PIXELROUTER_RESERVATION_GRACE_S": "1",
        "PIXELROUTER_SWEEP_INTERVAL_S": "0.5",
    }
    answered: list[str] = []
    admin_key = None
    key = ""
    for attempt in range(3):
        server = launcher.start(f"kill-{attempt}", db, admin_key=admin_key, env=env)
        admin_key = server.admin_key
        if not key:
            key, _ = server.create_key()
        response = httpx.post(
            f"{server.api}/images",
            json={"prompt": "then die", "size": "64x64"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=TIMEOUT,
        )
        server.kill9()  # the instant the answer arrived
        assert response.status_code == 200, response.text
        answered.append(response.headers["x-generation-id"])
    last = launcher.start("after", db, admin_key=admin_key, env=env)
    deadline = time.monotonic() + 60
    with Store(db) as store:
        for generation_id in answered:
            record = store.get_generation(generation_id)
            assert record is not None, f"{generation_id} was answered and left no record"
            while record is not None and record.state == "pending":
                assert time.monotonic() < deadline, "the sweeper never closed it"
                time.sleep(0.2)
                record = store.get_generation(generation_id)
            assert record is not None
            if record.state != "succeeded":  # killed before its close: never charged
                assert record.finish_reason == "outcome_unknown"
                assert record.total_cost_micro == 0
            assert store.ledger_total() == sum(
                g.total_cost_micro for g in store.list_generations() if g.state == "succeeded"
            )
    last.stop()
