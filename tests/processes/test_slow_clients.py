"""Slow-loris clients against a real server: a body that trickles in (or stops) gets a 408 in the
SPEC §5 envelope at the body deadline and its connection closed, while other clients are served
meanwhile; a prompt longer than the model's context is a 400."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dbutil import sqlite_url
from e2e.support import poll

from .servers import Launcher

pytestmark = pytest.mark.e2e

BODY_TIMEOUT_S = 1.0


def _trickle(port: int, key: str, sent: bytes, declared: int) -> tuple[bytes, float]:
    """Send headers and part of a body, then nothing: the server's answer and when it came."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /api/v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {key}\r\nContent-Length: {declared}\r\n\r\n".encode()
            + sent
        )
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
        return answer, time.monotonic() - started


def test_a_body_that_never_finishes_is_a_408_and_others_are_served(
    tmp_path: Path, launcher: Launcher
) -> None:
    server = launcher.start(
        "slow",
        f"sqlite:///{tmp_path / 'px.db'}",
        env={"PIXELROUTER_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)},
    )
    key, _ = server.create_key()
    body = json.dumps({"prompt": "slow", "size": "64x64"}).encode()

    with ThreadPoolExecutor(4) as pool:
        stalled = [pool.submit(_trickle, server.port, key, body[:10], len(body)) for _ in range(3)]
        # Meanwhile a well-behaved client is served.
        fine = httpx.post(
            f"{server.api}/images",
            json={"prompt": "fine", "size": "64x64"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        assert fine.status_code == 200, fine.text
        answers = [future.result(timeout=60) for future in stalled]

    for answer, seconds in answers:
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"connection: close" in head.lower()
        error = json.loads(payload)["error"]
        assert error["code"] == 408 and error["metadata"]["error_type"] == "timeout"
        assert "did not arrive within 1 s" in error["message"]
        assert seconds < BODY_TIMEOUT_S + 10


def test_a_prompt_longer_than_the_context_is_a_400(tmp_path: Path, launcher: Launcher) -> None:
    server = launcher.start("long", f"sqlite:///{tmp_path / 'px.db'}")
    key, _ = server.create_key()
    r = httpx.post(
        f"{server.api}/images",
        json={"prompt": "word " * 60_000, "size": "64x64"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["metadata"]["error_type"] == "invalid_request"
    assert "longer than the model's context (67344 tokens)" in error["message"]


def test_a_request_without_a_valid_key_is_refused_before_its_body(
    tmp_path: Path, launcher: Launcher
) -> None:
    """An unauthenticated client announcing a 60 MB body gets its 401 at once: the server
    reads, holds and parses none of it, and closes the connection."""
    # A gateway with no engine starts in a moment (never ready: it has no provider).
    server = launcher.start(
        "unauthenticated", sqlite_url(tmp_path), args=("--no-engine",), wait=False
    )

    def healthy() -> bool:
        try:
            return httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            assert server.process.poll() is None, server.log()
            return False

    poll("the gateway answering /health", healthy, 60)
    for authorization in ("", "Authorization: Bearer sk-pr-v1-" + "0" * 64 + "\r\n"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(
                b"POST /api/v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + authorization.encode()
                + b"Content-Length: 60000000\r\n\r\n"
                + b'{"prompt": "'
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
            assert time.monotonic() - started < 5  # not the 30 s body deadline
            assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
            assert b"connection: close" in answer.lower()
