"""The Containerfile: three targets from pinned bases, non-root, no HEALTHCHECK, no weights;
and the command each image runs (ENTRYPOINT + CMD, with the image's environment) is started
here from the installed package, so every command an image runs is one that works."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("gateway", "worker-cpu", "worker-cuda")


def stages() -> dict[str, dict]:
    """Each stage: its base, and the ENV, USER, ENTRYPOINT and CMD it sets (with the ARGs
    declared before the first FROM substituted)."""
    text = (ROOT / "Containerfile").read_text().replace("\\\n", " ")
    args: dict[str, str] = {}
    out: dict[str, dict] = {}
    current: dict | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and current is None and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip()
        elif word == "FROM":
            base, _, name = rest.partition(" AS ")
            for key, value in args.items():
                base = base.replace("${" + key + "}", value)
            parent = out.get(base.strip())
            current = {
                "base": base.strip(),
                "env": dict(parent["env"]) if parent else {},
                "user": parent["user"] if parent else None,
                "entrypoint": parent["entrypoint"] if parent else None,
                "cmd": parent["cmd"] if parent else None,
                "lines": [],
            }
            out[name.strip()] = current
        elif current is not None:
            current["lines"].append(line)
            if word == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    current["env"][key] = value
            elif word == "USER":
                current["user"] = rest
            elif word == "ENTRYPOINT":
                current["entrypoint"] = json.loads(rest)
            elif word == "CMD":
                current["cmd"] = json.loads(rest)
    return out


def test_three_targets_from_pinned_bases_without_healthcheck() -> None:
    found = stages()
    assert set(TARGETS) <= set(found)
    for stage in found.values():
        base = stage["base"]
        if base in found:
            continue  # a stage of this file
        image, _, tag = base.rpartition(":")
        assert "@sha256:" in base or (
            image and tag and tag != "latest" and any(c.isdigit() for c in tag)
        ), base
    assert "HEALTHCHECK" not in (ROOT / "Containerfile").read_text().upper().replace(
        "NO HEALTHCHECK", ""
    )


@pytest.mark.parametrize("target", TARGETS)
def test_targets_run_as_a_user_and_hold_no_weights(target: str) -> None:
    stage = stages()[target]
    assert stage["user"] and not stage["user"].startswith(("0", "root"))
    assert stage["entrypoint"] == ["pixelrouter"]
    text = (ROOT / "Containerfile").read_text()
    assert "huggingface-cli download" not in "\n".join(stage["lines"])
    assert "from_pretrained" not in text


def test_only_the_cuda_worker_gets_cuda_torch_and_the_gateway_no_torch() -> None:
    found = stages()
    gateway_build = " ".join(found["gateway-venv"]["lines"])
    assert "torch" not in gateway_build and "[postgres]" in gateway_build
    assert "whl/cpu" in found["worker-cpu-venv"]["lines"][-1] or "TORCH_CPU_INDEX" in " ".join(
        found["worker-cpu-venv"]["lines"]
    )
    assert "TORCH_CUDA_INDEX" in " ".join(found["worker-cuda-venv"]["lines"])
    assert found["worker-cuda"]["env"]["HF_HOME"].startswith("/models")


def test_the_build_context_holds_what_the_build_reads() -> None:
    for name in (".containerignore", ".dockerignore"):
        lines = (ROOT / name).read_text().splitlines()
        assert "*" in lines and {"!pyproject.toml", "!README.md", "!src/"} <= set(lines)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.engine
@pytest.mark.parametrize("target", TARGETS)
def test_the_image_command_starts_and_answers_its_probes(target: str, tmp_path: Path) -> None:
    """ENTRYPOINT + CMD with the image's ENV (paths moved under tmp_path, localhost port):
    /health answers; the demo worker also turns ready, the CUDA worker without weights says
    why it is not."""
    stage = stages()[target]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELROUTER_")}
    env.update({k: v for k, v in stage["env"].items() if k != "PATH"})
    env.update(
        PIXELROUTER_HOST="127.0.0.1",
        PIXELROUTER_PORT=str(port),
        PIXELROUTER_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=str(ROOT / "src"),
        OMP_NUM_THREADS="1",
    )
    if "HF_HOME" in env:
        env["HF_HOME"] = str(tmp_path / "models")  # an empty weights volume
    if target == "worker-cuda":
        env["PIXELROUTER_DEVICE"] = "cpu"  # no GPU here: the same command, the load fails
    argv = [sys.executable, "-m", "pixelrouter.cli", *stage["cmd"]]
    if stage["entrypoint"] != ["pixelrouter"]:
        pytest.fail(f"unexpected entrypoint {stage['entrypoint']}")
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                if (
                    target != "worker-cpu"
                    or httpx.get(f"{base}/ready", timeout=2).status_code == 200
                ):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        assert health is not None and health.status_code == 200
        ready = httpx.get(f"{base}/ready", timeout=5)
        if target == "worker-cpu":
            assert ready.status_code == 200
        elif target == "worker-cuda":
            # no weights on the volume: up and alive, and not ready, with the reason
            assert ready.status_code == 503, ready.text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
