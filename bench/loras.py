"""What an unfused LoRA adapter costs per denoising step, and what a swap (load) costs.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/loras.py [--weights demo|small|full] [--size 512]
     [--rank 16] [--steps 8] [--runs 3] [--device cuda] [--dtype bfloat16] [--json out.json]
Builds the pipeline, makes a random adapter with PEFT on the transformer's attention and
feed-forward projections (in diffusers' format), and times, per denoising step (the median gap
between `callback_on_step_end` calls, the best of interleaved rounds): the base model (a twin
pipeline that never held an adapter), the adapter active (PEFT's unfused
layers, as the engine serves it), the adapter loaded but switched off (`disable_lora`, as a base
batch runs beside loaded adapters), and the adapter fused into the weights as a fused worker
serves it (`[server] fuse_lora`: `Adapters.fuse`, diffusers' `fuse_lora` then
`unload_lora_weights`, on a third twin pipeline), with each one's ratio to the base. Then the
registration check (read, inspect, load) and the swap: loading an adapter from host memory into
the pipeline after another was unloaded (`engine/adapters.py`).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from pixelrouter.engine.adapters import LORA_TARGETS, Adapters  # noqa: E402
from pixelrouter.engine.pipeline import resolve_device, resolve_dtype  # noqa: E402
from pixelrouter.loras import LoraSpec  # noqa: E402
from pixelrouter.types import LoraChoice  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def build(weights: str, device: torch.device, dtype: torch.dtype) -> Any:
    if weights == "demo":
        from pixelrouter.engine.demo import build_demo_pipeline

        pipe: Any = build_demo_pipeline()
        pipe.to(device=device, dtype=dtype)
        return pipe
    from pixelrouter.engine.random_weights import build_random_pipeline

    return build_random_pipeline(weights, device=device, dtype=dtype)


def make_adapter(pipe: Any, directory: Path, rank: int, seed: int) -> Path:
    from diffusers import Flux2KleinPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = copy.deepcopy(pipe.transformer)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=False
    )
    torch.manual_seed(seed)
    transformer.add_adapter(config, adapter_name="bench")
    layers = get_peft_model_state_dict(transformer, adapter_name="bench")
    Flux2KleinPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=layers,
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return directory


def step_seconds(pipe: Any, embeds: torch.Tensor, size: int, steps: int, runs: int) -> float:
    """Median seconds between consecutive denoising steps over `runs` calls."""
    gaps: list[float] = []
    for run in range(runs + 1):  # the first call warms up
        marks: list[float] = []

        def on_step_end(_p: Any, _i: int, _t: Any, _k: dict, marks: list[float] = marks) -> dict:
            if embeds.is_cuda:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
            return {}

        pipe(
            prompt_embeds=embeds,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=torch.Generator("cpu").manual_seed(run),
            output_type="latent",
            callback_on_step_end=on_step_end,
        )
        if run:
            gaps += [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return statistics.median(gaps)


def timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", choices=("demo", "small", "full"), default="demo")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pipe = build(args.weights, device, dtype)
    plain = build(args.weights, device, dtype)  # same seeds: the same weights
    fused_pipe = build(args.weights, device, dtype)
    for each in (pipe, plain, fused_pipe):
        each.set_progress_bar_config(disable=True)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt="a lighthouse at dusk", device=device)
    timing = (embeds, args.size, args.steps, args.runs)

    with tempfile.TemporaryDirectory() as scratch:
        paths = [make_adapter(pipe, Path(scratch) / f"a{i}", args.rank, i) for i in range(2)]
        adapters = Adapters(pipe, capacity=2)
        active = [LoraChoice("a0", 1.0)]
        check: Any = None
        check_s = 0.0

        def register() -> None:
            nonlocal check, check_s
            check_s = time.perf_counter()
            check = adapters.check(LoraSpec("a0", str(paths[0])))
            check_s = time.perf_counter() - check_s
            assert check.ok, check.reason
            adapters.activate(active)

        # What a worker with `fuse_lora = "a0"` runs: the adapter in the weights, no PEFT layer.
        fused_adapters = Adapters(fused_pipe, capacity=1)
        assert fused_adapters.check(LoraSpec("a0", str(paths[0]))).ok
        fused_adapters.fuse("a0", 1.0)
        pipes = {"base": plain, "fused": fused_pipe}  # the others run on `pipe`

        conditions = {
            "base": lambda: None,
            "unfused": lambda: register() if check is None else adapters.activate(active),
            "loaded_disabled": lambda: adapters.activate([]),
            "fused": lambda: None,
        }
        # Rounds interleave the conditions; the least disturbed round of each counts (this
        # machine is shared, so a slow round is noise from elsewhere, never faster code).
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for name, enter in conditions.items():
                enter()
                # The base runs on a twin pipeline that never held an adapter.
                seconds = step_seconds(pipes.get(name, pipe), *timing)
                best[name] = min(best.get(name, seconds), seconds)
        base, unfused = best["base"], best["unfused"]
        disabled, fused = best["loaded_disabled"], best["fused"]
        swapper = Adapters(pipe, capacity=1)  # each activation loads one, unloads the other
        for i in range(2):
            assert swapper.check(LoraSpec(f"s{i}", str(paths[i]))).ok
        swaps = []
        for i in range(args.swaps):
            name = f"s{i % 2}"
            swaps.append(timed(lambda name=name: swapper.activate([LoraChoice(name, 1.0)])))

    report = {
        "weights": args.weights,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "size": args.size,
        "rank": args.rank,
        "adapter_layers": len(check.targets),
        "adapter_parameters": check.parameters,
        "threads": torch.get_num_threads(),
        "step_ms": {
            "base": round(base * 1000, 2),
            "unfused": round(unfused * 1000, 2),
            "loaded_disabled": round(disabled * 1000, 2),
            "fused": round(fused * 1000, 2),
        },
        "unfused_overhead_pct": round((unfused / base - 1) * 100, 1),
        "ratio_to_base": {
            "unfused": round(unfused / base, 3),
            "loaded_disabled": round(disabled / base, 3),
            "fused": round(fused / base, 3),
        },
        "check_ms": round(check_s * 1000, 1),
        "swap_ms_median": round(statistics.median(swaps) * 1000, 1),
        "rounds": args.rounds,
    }
    print(json.dumps(report))
    steps = report["step_ms"]
    print(f"\n{args.weights} weights, {args.size}x{args.size}, rank {args.rank}, {device} {dtype}")
    ratios: Any = report["ratio_to_base"]
    for name, value in steps.items():  # type: ignore[union-attr]
        ratio = f"  x{ratios[name]:.3f}" if name in ratios else ""
        print(f"  {name:>16}: {value:8.2f} ms/step{ratio}")
    print(f"  unfused overhead: {report['unfused_overhead_pct']} %")
    print(f"  check {report['check_ms']} ms, swap (load + unload) {report['swap_ms_median']} ms")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
