"""Demo-engine throughput: 1024x1024 latency alone, and a batch of 4 against 4 sequential singles.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/engine_demo.py [--size 1024] [--runs 5]
     [--device cuda] [--dtype bfloat16]
Prints one JSON object, then a table. It also checks SPEC §2 on the chosen device: a request run
alone equals a plain diffusers call on the same components, and batched images differ from their
plain calls by rounding only. Demo weights only: this measures the engine's overheads and the
batching gain on this machine, not the real model's speed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Awaitable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pixelrouter.engine.pipeline import EngineConfig  # noqa: E402
from pixelrouter.engine.scheduler import Engine  # noqa: E402
from pixelrouter.types import ImageRequest, ImageResult  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def request(size: int, prompt: str, seed: int = 1, batching: bool = True) -> ImageRequest:
    return ImageRequest(
        id=f"gen-{uuid.uuid4().hex[:16]}",
        model="black-forest-labs/flux.2-klein-4b",
        prompt=prompt,
        width=size,
        height=size,
        seed=seed,
        batching=batching,
    )


async def timed(awaitable: Awaitable[Any]) -> float:
    start = time.perf_counter()
    await awaitable
    return time.perf_counter() - start


def decoded(result: ImageResult) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result.images[0].data)).convert("RGB"))


def plain_call(engine: Engine, req: ImageRequest) -> np.ndarray:
    """The SPEC §2 reproduction: a plain call on the engine's own components (it is idle)."""
    assert engine.loaded is not None
    output = engine.loaded.pipe(
        prompt=req.prompt,
        height=req.height,
        width=req.width,
        num_inference_steps=engine.loaded.default_steps,
        guidance_scale=engine.loaded.default_guidance,
        generator=torch.Generator("cpu").manual_seed(req.seed),
    )
    return np.asarray(output.images[0])


async def check_spec(engine: Engine, size: int) -> dict[str, Any]:
    alone_req = request(size, "a spec check", seed=7, batching=False)
    alone = decoded(await engine.generate(alone_req))
    batch_reqs = [request(size, f"batched {i}", seed=20 + i) for i in range(4)]
    results = await asyncio.gather(*(engine.generate(r) for r in batch_reqs))
    worst, differing = 0, 0.0
    for req, result in zip(batch_reqs, results, strict=True):
        diff = np.abs(decoded(result).astype(np.int16) - plain_call(engine, req).astype(np.int16))
        worst, differing = max(worst, int(diff.max())), max(differing, float((diff > 0).mean()))
    return {
        "alone_equals_plain_call": bool(np.array_equal(alone, plain_call(engine, alone_req))),
        "batched_max_diff_255": worst,
        "batched_differing_fraction": round(differing, 6),
    }


async def bench(size: int, runs: int, device: str | None, dtype: str | None) -> dict[str, Any]:
    engine = Engine(EngineConfig(demo=True, device=device, dtype=dtype))
    engine.start()
    assert engine.wait_ready(300), engine.readiness()
    assert engine.loaded is not None
    try:
        await engine.generate(request(size, "warm-up"))
        await asyncio.gather(*(engine.generate(request(size, f"warm {i}")) for i in range(4)))
        alone = [
            await timed(engine.generate(request(size, f"alone {i}", batching=False)))
            for i in range(runs)
        ]
        cached = [
            await timed(engine.generate(request(size, "alone 0", batching=False)))
            for _ in range(runs)
        ]
        batch, sequential = [], []
        for r in range(max(3, runs)):
            before = engine.batches_run
            together = (engine.generate(request(size, f"b{r} {i}")) for i in range(4))
            batch.append(await timed(asyncio.gather(*together)))
            assert engine.batches_run == before + 1, "the 4 requests did not share one batch"

            async def singles(r: int = r) -> None:
                for i in range(4):
                    await engine.generate(request(size, f"s{r} {i}"))

            sequential.append(await timed(singles()))
        spec = await check_spec(engine, min(size, 512))
    finally:
        engine.shutdown()
    median_batch, median_seq = statistics.median(batch), statistics.median(sequential)
    return {
        "size": f"{size}x{size}",
        "device": str(engine.loaded.device),
        "dtype": str(engine.loaded.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "alone_latency_s_median": round(statistics.median(alone), 3),
        "alone_latency_s_cached_prompt_median": round(statistics.median(cached), 3),
        "batch4_wall_s_median": round(median_batch, 3),
        "batch4_images_per_s": round(4 / median_batch, 3),
        "sequential4_wall_s_median": round(median_seq, 3),
        "sequential4_images_per_s": round(4 / median_seq, 3),
        "batching_speedup": round(median_seq / median_batch, 3),
        "runs": runs,
        **spec,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, else float32")
    args = parser.parse_args()
    result = asyncio.run(bench(args.size, args.runs, args.device, args.dtype))
    print(json.dumps(result))
    rows = [
        ("one request alone (new prompt), median", f"{result['alone_latency_s_median']} s"),
        (
            "one request alone (cached prompt), median",
            f"{result['alone_latency_s_cached_prompt_median']} s",
        ),  # noqa: E501
        ("4 concurrent requests (one batch)", f"{result['batch4_images_per_s']} images/s"),
        ("4 sequential requests", f"{result['sequential4_images_per_s']} images/s"),
        ("batching speed-up", f"x{result['batching_speedup']}"),
        ("alone == plain diffusers call", str(result["alone_equals_plain_call"])),
        ("batched vs plain: max diff (1/255)", str(result["batched_max_diff_255"])),
        ("batched vs plain: differing values", str(result["batched_differing_fraction"])),
    ]
    width = max(len(name) for name, _ in rows)
    print(
        f"\ndemo engine, {result['size']}, {result['device']} {result['dtype']}, "
        f"{result['torch_threads']} torch thread(s)"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
