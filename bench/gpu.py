"""One command for a GPU: FLUX.2 [klein] 4B's real architecture with random weights (nothing
downloaded) through the engine benchmark (bench/engine.py), in bf16 and then with each speed
option this GPU supports, at 1024x1024 and 512x512 with 1, 2 and 4 requests at once (batches
up to 4). Writes one JSON file and prints a table comparing each option with plain bf16.

Run: make bench-gpu            (on a machine with one NVIDIA GPU and a CUDA torch)
     .venv/bin/python bench/gpu.py [--json build/bench-gpu.json] [--budget-s 450]
     .venv/bin/python bench/gpu.py --smoke   (CPU, tiny demo weights, tiny sizes: the CI check)

Options tried, each in a fresh engine, when the GPU and the installed packages allow them:
  compile=1 (regional torch.compile), cuda_graphs=1 (compile with CUDA graphs),
  attention_backend=NAME (diffusers' set_attention_backend: _native_cudnn and _native_flash
  from torch, flash / _flash_3 / sage when flash-attn, its Hopper build or sageattention is
  installed), fp8=1 (torchao float8, compute capability 8.9+). An option the engine refuses
  at load is recorded with its reason. Once --budget-s is spent, the remaining options are
  recorded as skipped, so the whole run stays under 8 minutes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_engine", HERE / "engine.py")
assert _spec is not None and _spec.loader is not None
engine_bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_engine"] = engine_bench
_spec.loader.exec_module(engine_bench)

# attention backends of diffusers' dispatcher and the package each needs (None: torch's own)
ATTENTION_BACKENDS: dict[str, str | None] = {
    "_native_cudnn": None,
    "_native_flash": None,
    "flash": "flash_attn",
    "_flash_3": "flash_attn_interface",
    "sage": "sageattention",
}


@dataclass(frozen=True)
class Capabilities:
    """What this machine can run: the device and the optional packages installed."""

    cuda: bool
    compute_capability: tuple[int, int] | None
    packages: frozenset[str]

    @classmethod
    def detect(cls, device: str) -> Capabilities:
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        wanted = {"triton", "torchao", *(p for p in ATTENTION_BACKENDS.values() if p)}
        return cls(
            cuda=cuda,
            compute_capability=torch.cuda.get_device_capability(device) if cuda else None,
            packages=frozenset(p for p in wanted if importlib.util.find_spec(p) is not None),
        )


def plan(caps: Capabilities) -> list[tuple[str, list[str]]]:
    """(label, engine options) to run, bf16 first: every speed option `caps` supports."""
    runs: list[tuple[str, list[str]]] = [("baseline", [])]
    if not caps.cuda:
        return runs  # the options below are CUDA's (compile on a CPU measures nothing useful)
    if "triton" in caps.packages:
        runs += [("compile", ["compile=1"]), ("cuda_graphs", ["cuda_graphs=1"])]
    for backend, package in ATTENTION_BACKENDS.items():
        if package is None or package in caps.packages:
            runs.append((f"attention={backend}", [f"attention_backend={backend}"]))
    if "torchao" in caps.packages and (caps.compute_capability or (0, 0)) >= (8, 9):
        runs.append(("fp8", ["fp8=1"]))
        if "triton" in caps.packages:
            runs.append(("fp8+compile", ["fp8=1", "compile=1"]))
    return runs


def _engine_args(args: argparse.Namespace, options: list[str]) -> argparse.Namespace:
    return argparse.Namespace(
        random_weights=None if args.smoke else "full",
        device=args.device,
        dtype=args.dtype,
        option=options,
        sizes=args.sizes,
        concurrency=args.concurrency,
        rounds=args.rounds,
    )


def _release() -> None:
    """Free the last engine's memory and compiled code before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def run(args: argparse.Namespace) -> dict[str, Any]:
    caps = Capabilities.detect(args.device)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights": "demo (smoke)" if args.smoke else "random full (klein 4B architecture)",
        "device": args.device,
        "gpu": torch.cuda.get_device_name(args.device) if caps.cuda else None,
        "compute_capability": caps.compute_capability,
        "packages": sorted(caps.packages),
        "torch": torch.__version__,
        "budget_s": args.budget_s,
        "runs": {},
    }
    for label, options in plan(caps):
        spent = time.perf_counter() - started
        if spent > args.budget_s:
            report["runs"][label] = {
                "options": options,
                "skipped": f"time budget spent ({spent:.0f} s)",
            }
            continue
        print(f"== {label} ({spent:.0f} s in)", file=sys.stderr, flush=True)
        try:
            result = asyncio.run(engine_bench.run(_engine_args(args, options)))
        except SystemExit as exc:  # the engine refused the option at load, with its reason
            report["runs"][label] = {"options": options, "refused": str(exc)}
        else:
            report["runs"][label] = {"options": options, **result}
        finally:
            _release()
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def table(report: dict[str, Any]) -> str:
    runs = report["runs"]
    base = runs.get("baseline", {}).get("sizes", {})
    lines = [
        f"\n{report['weights']} on {report['gpu'] or report['device']}, torch {report['torch']}, "
        f"{report['total_s']} s",
        "",
        "| option | size | requests | images/s | p50 | x baseline | denoise (1 image) | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, result in runs.items():
        if "sizes" not in result:
            why = result.get("refused") or result.get("skipped")
            lines.append(f"| {label} | - | - | - | - | - | {why} | - |")
            continue
        for size, cell in result["sizes"].items():
            for concurrency, scheduled in cell["scheduled"].items():
                reference = base.get(size, {}).get("scheduled", {}).get(concurrency)
                ratio = (
                    f"x{scheduled['images_per_s'] / reference['images_per_s']:.2f}"
                    if reference
                    else "-"
                )
                lines.append(
                    f"| {label} | {size} | {concurrency} | {scheduled['images_per_s']} | "
                    f"{scheduled['p50_s'] * 1000:.0f} ms | {ratio} | "
                    f"{cell['stages']['denoising'] * 1000:.1f} ms | {result['load_s']} s |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, demo weights, tiny sizes")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda")
    parser.add_argument("--budget-s", type=float, default=450.0)
    parser.add_argument("--json", type=Path, default=Path("build/bench-gpu.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        args.sizes, args.concurrency, args.rounds = [(64, 64), (32, 32)], [1, 2, 4], 1
    else:
        args.device = args.device or "cuda"
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit(
                f"no CUDA device for torch {torch.__version__}: install a CUDA torch "
                "(`make install TORCH=torch`) on a machine with an NVIDIA GPU, or use --smoke."
            )
        args.sizes, args.concurrency, args.rounds = [(1024, 1024), (512, 512)], [1, 2, 4], 2
    report = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    main()
