"""The gateway imports and starts without torch, diffusers or transformers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

BLOCK_HEAVY = (
    "import sys\n"
    "for name in ('torch', 'diffusers', 'transformers', 'accelerate'):\n"
    "    sys.modules[name] = None  # any import of them raises ImportError\n"
)


def test_the_api_modules_never_import_the_heavy_stack(tmp_path: Path) -> None:
    code = BLOCK_HEAVY + (
        "from pixelrouter.config import Settings\n"
        "from pixelrouter.app import create_app\n"
        "import pixelrouter.cli, pixelrouter.generations, pixelrouter.providers.local\n"
        f"app = create_app(Settings(data_dir=__import__('pathlib').Path({str(tmp_path)!r})))\n"
        "px = app.state.px\n"
        "print(px.router.ready()[1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "the engine is not installed" in out.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("flags", [["--no-engine"], []])
def test_serve_starts_without_the_engine_extra(tmp_path: Path, flags: list[str]) -> None:
    port = free_port()
    code = BLOCK_HEAVY + "from pixelrouter.cli import main\nmain()\n"
    args = ["serve", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'px.db'}", *flags]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert health.status_code == 200
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert ready.status_code == 503
        message = json.loads(ready.text)["error"]["message"]
        if flags:
            assert "no provider is configured" in message
        else:
            assert "engine is not installed" in message
    finally:
        process.terminate()
        process.wait(timeout=30)
