"""SPEC §7, "Never log a key": the whole output of a server run at debug level holds no key,
neither the management key it was given nor one it created or was shown."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

import httpx
import pytest

from dbutil import sqlite_url
from e2e.support import poll
from pixelrouter.keys import generate_key

from .servers import Launcher

pytestmark = pytest.mark.e2e

KEY_PATTERN = re.compile(r"sk-pr-v1-[0-9a-f]{64}")
PREFIX = "sk-pr-v1-"


def _leaks(log: str, keys: list[str]) -> list[str]:
    """Where a key (or its secret part alone) appears: the log lines, the secrets masked."""
    secrets = [key.removeprefix(PREFIX) for key in keys]
    lines = [
        line
        for line in log.splitlines()
        if KEY_PATTERN.search(line) or any(secret in line for secret in secrets)
    ]
    masked = [re.sub(r"[0-9a-f]{64}", "<64 hex>", line) for line in lines]
    return masked


def test_server_logs_hold_no_key(tmp_path: Path, launcher: Launcher) -> None:
    server = launcher.start("debug", sqlite_url(tmp_path), args=("--demo", "--log-level", "debug"))
    key, _ = server.create_key(limit=1.0)
    unknown = generate_key()  # well formed, never stored
    with httpx.Client(base_url=server.api, timeout=httpx.Timeout(120, connect=10)) as client:

        def bearer(value: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {value}"}

        body = {"prompt": "secret keeping", "size": "64x64"}
        made = client.post("/images", json=body, headers=bearer(key))
        assert made.status_code == 200, made.text
        me = client.get("/key", headers=bearer(key))
        assert me.status_code == 200, me.text
        bad = client.get("/key", headers=bearer(unknown))
        assert bad.status_code == 401, bad.text
        refused = client.post("/images", json=body, headers=bearer(server.admin_key))
        assert refused.status_code == 403, refused.text
        listed = client.get("/keys", headers=bearer(server.admin_key))
        assert listed.status_code == 200, listed.text
    server.stop()
    assert server.process.returncode in (0, -15), server.process.returncode

    log = server.log()
    assert "DEBUG" in log, "the server did not log at debug level"
    assert "POST /api/v1/images" in log, "the access log is missing"
    assert _leaks(log, [server.admin_key, key, unknown]) == []


def test_a_key_in_a_query_string_is_not_logged(tmp_path: Path, launcher: Launcher) -> None:
    # A gateway with no engine starts in a moment; the access log is the same.
    server = launcher.start("gateway", sqlite_url(tmp_path), args=("--no-engine",), wait=False)

    def healthy() -> bool:
        try:
            return httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            assert server.process.poll() is None, server.log()
            return False

    poll("the gateway answering /health", healthy, 60)
    key, _ = server.create_key()
    # Not through httpx: its own INFO log line would hold the URL, key included, in this
    # test run's log.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", f"/api/v1/models?api_key={key}")
        assert connection.getresponse().status == 401
    finally:
        connection.close()
    server.stop()

    log = server.log()
    assert _leaks(log, [server.admin_key, key]) == []
    # The access line is there, masked: masking must not break uvicorn's formatter.
    assert "--- Logging error ---" not in log
    assert 'GET /api/v1/models?api_key=sk-pr-v1-[redacted] HTTP/1.1" 401' in log
