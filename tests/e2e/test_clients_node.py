"""The Node half of the client matrix: the official Node clients, pinned in
clients/node/package-lock.json, run unchanged against a real `pixelrouter serve --demo`.

Each program in clients/node/ makes every call its client can make on pixelrouter's endpoints,
decodes every image it gets and checks its size, and prints one JSON line per call:
`{"client", "version", "call", "ok", "detail", "requests"}`. A test here runs one program and
fails with every failing line (the client's own error, e.g. the zod issue path) in its message.

`npm ci --prefix clients/node` (the Makefile's `clients-node` target) installs the clients; the
tests skip when it has not run, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .support import Server

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"
PROGRAMS = ["openrouter-sdk.mjs", "ai-sdk.mjs", "openai.mjs"]
TIMEOUT_S = 240


def _not_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (the Node client matrix needs Node.js 20 or later)"
    if not (NODE_DIR / "node_modules").is_dir():
        return (
            "clients/node/node_modules is missing: run `make clients-node` "
            "(npm ci --prefix clients/node) to install the pinned Node clients"
        )
    return None


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """clients/node, installed; checked before the server starts (same scope, listed first)."""
    reason = _not_ready()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return NODE_DIR


def _run(program: str, directory: Path, server: Server) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "PIXELROUTER_BASE_URL": server.api,
        "PIXELROUTER_API_KEY": server.key,
        "PIXELROUTER_ADMIN_KEY": server.admin_key,
        "NO_COLOR": "1",
    }
    try:
        done = subprocess.run(
            ["node", program],
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return -1, out, f"timed out after {TIMEOUT_S}s\n{err}"
    return done.returncode, done.stdout, done.stderr


def _parse(stdout: str) -> tuple[list[dict[str, Any]], list[str]]:
    results, other = [], []
    for line in stdout.splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:
            other.append(line)
    return results, other


def _failure(result: dict[str, Any]) -> str:
    requests = "; ".join(
        f"{r.get('method')} {r.get('path')} -> {r.get('status', 'no response')}"
        + (f" body {json.dumps(r['body'])[:300]}" if r.get("body") is not None else "")
        for r in result.get("requests", [])
    )
    return f"- {result['call']}: {result['detail']}\n    wire: {requests}"


@pytest.mark.parametrize("program", PROGRAMS)
def test_node_client(node_clients: Path, server: Server, program: str) -> None:
    returncode, stdout, stderr = _run(program, node_clients, server)
    results, other = _parse(stdout)
    assert results, (
        f"node {program} printed no result (exit {returncode}):\n{stdout[-4000:]}\n{stderr[-4000:]}"
    )
    client = f"{results[0]['client']} {results[0]['version']}"
    failed = [r for r in results if not r["ok"]]
    summary = f"{client}: {len(failed)} of {len(results)} calls failed"
    assert not failed, summary + ":\n" + "\n".join(_failure(r) for r in failed)
    assert returncode == 0, (
        f"{client}: every call passed but node exited {returncode}:\n"
        + "\n".join(other[-20:])
        + f"\n{stderr[-4000:]}"
    )
    assert not other, f"{client}: lines that are not JSON on stdout: {other[:5]}"
