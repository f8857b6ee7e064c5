"""The gateway benchmark (bench/gateway.py) runs: a short smoke run through every target but
Portkey (which needs `npm ci`). Each target must hand back the upstream's PNG byte for byte, and
every request sent must be answered. Speed is not asserted here (docs/performance.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_bench

pytestmark = pytest.mark.e2e


def test_the_gateway_benchmark_runs_every_target(tmp_path: Path) -> None:
    report = run_bench(
        "gateway.py",
        "--quick",
        "--rates",
        "5",
        "--no-portkey",
        out=tmp_path / "gateway.json",
        timeout=300,
    )
    targets = report["targets"]
    assert set(targets) == {"direct", "relay", "relay-buffered", "pixelrouter"}
    for name, target in targets.items():
        assert target["check"].startswith("ok"), (name, target)
    cells = {cell["target"]: cell for cell in report["cells"]}
    assert set(cells) == set(targets)
    for name, cell in cells.items():
        assert cell["ok"] == cell["scheduled"] > 0, (name, cell)
        assert cell["errors"] == {}, (name, cell)
    # The added latency is measured against the direct path for every gateway row.
    assert all("added_p50_ms" in cells[name] for name in targets if name != "direct")


def test_the_step_timings_cover_the_whole_request(tmp_path: Path) -> None:
    report = run_bench(
        "gateway_steps.py", "--requests", "5", out=tmp_path / "steps.json", timeout=300
    )
    marks = report["marks_p50_ms"]
    # Every wrapped step was reached, in the order a request passes them.
    for earlier, later in [
        ("metrics middleware entered", "FastAPI dependencies begins"),
        ("key lookup begins", "translation begins"),
        ("service begins", "upstream exchange begins"),
        ("upstream exchange ends", "JSON read begins"),
        ("JSON read ends", "render begins"),
        ("render ends", "answer sent"),
    ]:
        assert marks[earlier] <= marks[later], (earlier, later, marks)
    assert marks["answer sent"] == report["whole_p50_ms"]
