"""bench/gpu.py (`make bench-gpu`): the plan of options per GPU, and a CPU smoke run of the
whole command with the tiny demo weights, so the GPU run's code path is exercised in CI."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module
    spec.loader.exec_module(module)
    return module


def test_a_hopper_with_every_package_tries_every_option(gpu_bench) -> None:
    caps = gpu_bench.Capabilities(
        cuda=True,
        compute_capability=(9, 0),
        packages=frozenset(
            {"triton", "torchao", "flash_attn", "flash_attn_interface", "sageattention"}
        ),
    )
    labels = [label for label, _ in gpu_bench.plan(caps)]
    assert labels[0] == "baseline"
    for label in (
        "compile",
        "cuda_graphs",
        "attention=_native_cudnn",
        "attention=flash",
        "attention=_flash_3",
        "attention=sage",
        "fp8",
        "fp8+compile",
    ):
        assert label in labels


def test_options_a_gpu_cannot_run_are_left_out(gpu_bench) -> None:
    ampere = gpu_bench.Capabilities(
        cuda=True, compute_capability=(8, 0), packages=frozenset({"torchao"})
    )
    labels = [label for label, _ in gpu_bench.plan(ampere)]
    assert "fp8" not in labels and "compile" not in labels and "attention=flash" not in labels
    assert "attention=_native_cudnn" in labels
    cpu = gpu_bench.Capabilities(cuda=False, compute_capability=None, packages=frozenset())
    assert gpu_bench.plan(cpu) == [("baseline", [])]


def test_every_planned_option_is_an_engine_option(gpu_bench) -> None:
    from dataclasses import fields

    from pixelrouter.engine.pipeline import EngineConfig

    known = {f.name for f in fields(EngineConfig)}
    caps = gpu_bench.Capabilities(
        True, (10, 0), frozenset(gpu_bench.ATTENTION_BACKENDS.values()) | {"triton", "torchao"}
    )
    for _, options in gpu_bench.plan(caps):
        for option in options:
            assert option.partition("=")[0] in known


def test_the_smoke_run_writes_one_json_file_and_a_table(gpu_bench, tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    report = gpu_bench.main(["--smoke", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    baseline = report["runs"]["baseline"]
    assert set(baseline["sizes"]) == {"64x64", "32x32"}
    for cell in baseline["sizes"].values():
        assert set(cell["scheduled"]) == {1, 2, 4}
        assert all(s["images_per_s"] > 0 for s in cell["scheduled"].values())
    table = capsys.readouterr().out
    assert "| baseline | 64x64 | 4 |" in table


def test_an_option_the_engine_refuses_is_recorded_with_its_reason(
    gpu_bench, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(gpu_bench, "plan", lambda caps: [("cuda_graphs", ["cuda_graphs=1"])])
    report = gpu_bench.main(["--smoke", "--json", str(tmp_path / "b.json")])
    assert "CUDA graphs need a CUDA device" in report["runs"]["cuda_graphs"]["refused"]
