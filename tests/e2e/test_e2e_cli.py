"""The `pixelrouter generate` command, against the real server and with the in-process demo
engine, run as a subprocess the way a user runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .support import Server, cli_env, image_size

pytestmark = pytest.mark.e2e

CLI_TIMEOUT_S = 240


def _check(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_generate_on_the_server_and_in_process(server: Server, tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")

    def in_process(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*server.cli, "generate", "a cat", "--demo", "--size", "128x128"]
            + ["--seed", "5", "-o", str(tmp_path / name)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # The two in-process runs load their own pipelines: start them now, side by side.
    local_runs = [in_process("local-1.png"), in_process("local-2.png")]
    try:
        for name, seed in (("remote-1.png", "5"), ("remote-2.png", "5"), ("remote-big.png", "9")):
            size = "128x128" if name != "remote-big.png" else "256x256"
            remote = subprocess.run(
                [*server.cli, "generate", "a cat", "--server", server.url]
                + ["--api-key", server.key, "--size", size, "--seed", seed]
                + ["-o", str(tmp_path / name)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT_S,
            )
            _check(remote)
            assert f"wrote {tmp_path / name}" in " ".join(remote.stderr.split())
        for run in local_runs:
            stdout, stderr = run.communicate(timeout=CLI_TIMEOUT_S)
            _check(subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr))
    finally:
        for run in local_runs:
            if run.poll() is None:
                run.kill()
                run.wait()

    assert image_size((tmp_path / "remote-big.png").read_bytes()) == (256, 256)
    remote = [(tmp_path / f"remote-{i}.png").read_bytes() for i in (1, 2)]
    local = [(tmp_path / f"local-{i}.png").read_bytes() for i in (1, 2)]
    assert [image_size(data) for data in remote + local] == [(128, 128)] * 4
    # Same seed, run alone: the in-process demo engine is byte-identical across runs ...
    assert local[0] == local[1]
    # ... and so is the server (nothing else runs beside these requests) and it makes the same
    # image as the in-process engine (same demo weights, float32 on CPU; SPEC §2).
    assert remote[0] == remote[1] == local[0]


def test_generate_reports_a_server_error(server: Server, tmp_path: Path) -> None:
    result = subprocess.run(
        [*server.cli, "generate", "a cat", "--server", server.url, "--api-key", server.key]
        + ["--size", "1000x1000", "-o", str(tmp_path / "never.png")],
        cwd=tmp_path,
        env=cli_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert result.returncode == 1
    assert "992x992" in result.stderr
    assert not (tmp_path / "never.png").exists()


def test_loras_list_asks_the_running_server(server: Server, tmp_path: Path) -> None:
    """`pixelrouter loras list --server` reads GET /api/v1/loras of a real server (the demo
    registers none)."""
    listed = subprocess.run(
        [*server.cli, "loras", "list", "--server", server.url, "--api-key", server.key],
        cwd=tmp_path,
        env=cli_env(tmp_path / "data"),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    _check(listed)
    assert "no LoRA adapters registered" in listed.stdout


def test_loras_add_list_remove_on_the_running_server(server: Server, tmp_path: Path) -> None:
    """`pixelrouter loras add` uploads an adapter made here to the real server, which checks and
    serves it; `list` shows it ready; `remove` takes it away. An inference key may not add."""
    import httpx

    from engine.loras_helpers import make_adapter

    adapter = make_adapter(tmp_path / "ink", seed=1)
    env = cli_env(tmp_path / "data")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*server.cli, "loras", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    where = ["--server", server.url, "--api-key", server.admin_key]
    refused = cli(
        "add", str(adapter), "--name", "cli-ink", "--server", server.url, "--api-key", server.key
    )
    assert refused.returncode == 1 and "error 403" in refused.stderr
    added = cli(
        "add",
        str(adapter),
        "--name",
        "cli-ink",
        "--scale",
        "0.7",
        "--price-first-mp",
        "0.05",
        *where,
    )
    _check(added)
    assert "added cli-ink" in added.stderr and "ready" in added.stdout and "$0.05" in added.stdout
    listed = cli("list", *where)
    _check(listed)
    assert "cli-ink" in listed.stdout and "ready" in listed.stdout

    body = {"prompt": "a cat", "size": "128x128", "seed": 5, "loras": [{"name": "cli-ink"}]}
    made = httpx.post(f"{server.api}/images", json=body, headers=server.auth(), timeout=120)
    assert made.status_code == 200, made.text
    assert made.json()["usage"]["cost"] == pytest.approx(0.05)

    _check(removed := cli("remove", "cli-ink", *where))
    assert "removed cli-ink" in removed.stderr
    again = cli("remove", "cli-ink", *where)
    assert again.returncode == 1 and "error 404" in again.stderr
    assert "no LoRA adapters registered" in cli("list", *where).stdout
    gone = httpx.post(f"{server.api}/images", json=body, headers=server.auth(), timeout=120)
    assert gone.status_code == 400 and "unknown LoRA adapter 'cli-ink'" in gone.text
