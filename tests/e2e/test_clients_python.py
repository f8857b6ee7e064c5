"""The Python half of the client matrix: real client libraries (the `clients` extra: `openrouter`,
`openai`, `litellm`, pinned) run unchanged against a real `pixelrouter serve --demo`.

Each program in clients/python/ makes every call its client can make on pixelrouter's endpoints,
decodes every image it gets and checks its size, and prints one JSON line per call:
`{"client", "version", "call", "ok", "detail"}`. A test here runs one program with this
interpreter and fails with every failing line (the client's own error text, e.g. the pydantic
validation path) in its message.

A client package that is not installed skips its test, except under CI=true, where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .support import Server

pytestmark = pytest.mark.e2e

PROGRAMS = Path(__file__).resolve().parents[2] / "clients" / "python"
TIMEOUT_S = 300
CLIENTS = {  # program -> the package it needs
    "openrouter_sdk.py": "openrouter",
    "openai_sdk.py": "openai",
    "litellm_client.py": "litellm",
}


def _require(package: str) -> None:
    """Checked before the server fixture starts anything (listed first)."""
    if importlib.util.find_spec(package) is None:
        reason = (
            f"{package} is not installed: pip install -e '.[clients]' (the pinned client matrix)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)


@pytest.fixture(
    scope="session", params=sorted(CLIENTS), ids=lambda program: program.removesuffix(".py")
)
def program(request: pytest.FixtureRequest) -> str:
    _require(CLIENTS[request.param])
    return str(request.param)


def _run(program: str, server: Server) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "PIXELROUTER_BASE_URL": server.api,
        "PIXELROUTER_API_KEY": server.key,
        "PIXELROUTER_ADMIN_KEY": server.admin_key,
        "OMP_NUM_THREADS": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network: LiteLLM's bundled cost map
        "PYTHONUNBUFFERED": "1",
    }
    try:
        done = subprocess.run(
            [sys.executable, str(PROGRAMS / program)],
            cwd=PROGRAMS,
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


def _parse(stdout: str) -> list[dict[str, Any]]:
    lines = []
    for text in stdout.splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if {"client", "version", "call", "ok", "detail"} <= line.keys():
                lines.append(line)
    return lines


@pytest.mark.timeout(TIMEOUT_S + 120)  # the program, plus the server's start for the first test
def test_python_client(program: str, server: Server) -> None:
    returncode, stdout, stderr = _run(program, server)
    lines = _parse(stdout)
    assert lines, f"{program} printed no result line (exit {returncode}); stderr:\n{stderr[-4000:]}"
    failed = [line for line in lines if not line["ok"]]
    report = "\n".join(
        f"- {line['client']} {line['version']}: {line['call']}\n    {line['detail']}"
        for line in failed
    )
    assert not failed, f"{len(failed)} of {len(lines)} {program} calls failed:\n{report}"
    assert returncode == 0, (
        f"{program} exited {returncode} with every call ok; stderr:\n{stderr[-4000:]}"
    )
