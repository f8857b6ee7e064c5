"""End-to-end fixtures: ONE real `pixelrouter serve --demo` process for the whole session.

The server runs the real diffusers pipeline with tiny random weights (images are noise of the
asked size), a temporary SQLite database and a fixed management key. Tests talk to it over
TCP with the official `openai` and `openrouter` SDKs, plain httpx and the CLI.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pixelrouter.keys import generate_key

from .support import Server, cli_command, cli_env

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
    # `serve --demo` needs the engine extra.
    collect_ignore_glob = ["test_*.py"]

STARTUP_DEADLINE_S = 180.0
LOG_TAIL_CHARS = 20_000

_server_log: Path | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return text[-LOG_TAIL_CHARS:]


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    last = "no answer yet"
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"pixelrouter serve exited with {process.returncode} before it was ready; "
                    f"its log:\n{_tail(log)}"
                )
            try:
                response = client.get(f"{url}/ready")
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
    raise RuntimeError(
        f"pixelrouter serve was not ready within {STARTUP_DEADLINE_S}s (last: {last}); "
        f"its log:\n{_tail(log)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Server]:
    """A real server on a free port, ready, with a management and an inference key."""
    global _server_log
    root = tmp_path_factory.mktemp("pixelrouter-e2e")
    log = root / "server.log"
    admin_key = generate_key()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cli = cli_command()
    command = [
        *cli,
        "serve",
        "--demo",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--db",
        f"sqlite:///{root / 'px.db'}",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=cli_env(root / "data", admin_key),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    _server_log = log
    try:
        _wait_ready(url, process, log)
        created = httpx.post(
            f"{url}/api/v1/keys",
            json={"name": "e2e"},
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=30,
        )
        assert created.status_code == 201, created.text
        yield Server(url, admin_key, created.json()["key"], log, cli)
    finally:
        _stop(process)
        failed = request.session.testsfailed > 0
        if failed or process.returncode not in (0, -15):
            # Shown with `-s`, and always in the captured output of the failing teardown.
            sys.stderr.write(
                f"\n---- pixelrouter serve (exit {process.returncode}) log ----\n{_tail(log)}\n"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failing e2e test's report carries the tail of the server's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _server_log is not None and _server_log.exists():
        report.sections.append(("pixelrouter serve log (tail)", _tail(_server_log)))
