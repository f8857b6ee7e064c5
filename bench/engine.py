"""Engine speed: images/s and latency percentiles at several concurrencies and sizes, through the
batching scheduler and through plain sequential `pipe(...)` calls, with a per-stage breakdown.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/engine.py [--demo | --random-weights small|full]
     [--sizes 512,1024] [--concurrency 1,2,4,8] [--rounds 3] [--device cuda] [--dtype bfloat16]
     [--option compile=1 --option attention_backend=flash ...] [--quick] [--json FILE]

`--demo` (the default) uses the tiny demo weights; `--random-weights full` builds FLUX.2 [klein]
4B's real configurations with random bf16 weights (engine/random_weights.py): the real model's
arithmetic, so on a GPU its timings are the real model's; `small` is the same structure, shrunk
so a CPU runs it. `--option NAME=VALUE` sets an `EngineConfig` speed option (compile, cuda_graphs,
static_shapes, fuse_qkv, fp8, trim_text_encoder, overlap_decode, attention_backend,
max_batch_size, prompt_cache_size); repeat it to compare runs.

For each size:
  - stages, one image alone (median of --rounds): text encoding (`encode_prompt`), denoising
    (`output_type="latent"`), VAE decode and postprocess, then PNG / JPEG / WebP encoding of the
    image (the engine's own `encode_image`), and the whole plain `pipe(...)` call;
  - sequential: `concurrency` plain `pipe(...)` calls one after another (no scheduler);
  - scheduled: `concurrency` requests at once through the engine's batching scheduler, each with
    its own prompt (so no embedding is reused), `--rounds` times; latency per request from submit
    to encoded image, images/s as images over the wall time of the round.
Prints one JSON object, then a table. `--quick` is the CI smoke mode: 64x64 and 128x128,
concurrency 1 and 2, one round.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import fields  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from pixelrouter.engine.pipeline import EngineConfig  # noqa: E402
from pixelrouter.engine.scheduler import Engine  # noqa: E402
from pixelrouter.imagecodec import encode_image  # noqa: E402
from pixelrouter.types import ImageRequest  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
MODEL = "black-forest-labs/flux.2-klein-4b"
FORMATS = ("png", "jpeg", "webp")


def _request(width: int, height: int, prompt: str, seed: int = 1) -> ImageRequest:
    return ImageRequest(
        id=f"gen-{uuid.uuid4().hex[:16]}",
        model=MODEL,
        prompt=prompt,
        width=width,
        height=height,
        seed=seed,
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _summary(seconds: list[float]) -> dict[str, float]:
    return {
        "p50_s": round(_pct(seconds, 0.5), 4),
        "p99_s": round(_pct(seconds, 0.99), 4),
        "n": len(seconds),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    started = time.perf_counter()
    result = work()
    _sync(device)
    return time.perf_counter() - started, result


def stages(engine: Engine, width: int, height: int, rounds: int) -> dict[str, Any]:
    """One image alone, stage by stage, on the engine's own pipeline (idle meanwhile)."""
    loaded = engine.loaded
    assert loaded is not None
    pipe, device = loaded.pipe, loaded.device
    steps, guidance = loaded.default_steps, loaded.default_guidance
    common = {
        "height": height,
        "width": width,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "max_sequence_length": loaded.max_sequence_length,
        "text_encoder_out_layers": loaded.text_encoder_out_layers,
    }
    times: dict[str, list[float]] = {
        k: [] for k in ("text_encoding", "denoising", "vae_decode", "plain_call")
    }
    times.update({f"encode_{fmt}": [] for fmt in FORMATS})
    sizes: dict[str, int] = {}
    for r in range(rounds + 1):  # the first round warms up and is not counted
        prompt = f"a lighthouse at dusk, stage round {r}"
        with torch.no_grad():
            t_text, (embeds, _) = _timed(
                device,
                lambda prompt=prompt: pipe.encode_prompt(
                    prompt=prompt,
                    device=device,
                    max_sequence_length=loaded.max_sequence_length,
                    text_encoder_out_layers=loaded.text_encoder_out_layers,
                ),
            )
            t_denoise, latents = _timed(
                device,
                lambda embeds=embeds, r=r: (
                    pipe(
                        prompt_embeds=embeds,
                        generator=torch.Generator("cpu").manual_seed(r),
                        output_type="latent",
                        **common,
                    ).images
                ),
            )
            t_decode, image = _timed(device, lambda latents=latents: _decode(pipe, latents))
            t_plain, _ = _timed(
                device,
                lambda prompt=prompt, r=r: pipe(
                    prompt=prompt, generator=torch.Generator("cpu").manual_seed(r), **common
                ),
            )
        encoded = {}
        for fmt in FORMATS:
            t_enc, data = _timed(device, lambda fmt=fmt, image=image: encode_image(image, fmt))
            encoded[fmt] = (t_enc, len(data))
        if r == 0:
            continue
        times["text_encoding"].append(t_text)
        times["denoising"].append(t_denoise)
        times["vae_decode"].append(t_decode)
        times["plain_call"].append(t_plain)
        for fmt, (t_enc, size) in encoded.items():
            times[f"encode_{fmt}"].append(t_enc)
            sizes[fmt] = size
    megapixels = width * height / 1_048_576
    out: dict[str, Any] = {k: round(statistics.median(v), 4) for k, v in times.items()}
    out["encode_ms_per_mp"] = {
        fmt: round(1000 * out[f"encode_{fmt}"] / megapixels, 2) for fmt in FORMATS
    }
    out["encoded_bytes"] = sizes
    return out


def _decode(pipe: Any, latents: torch.Tensor) -> Any:
    """The engine's decode (`Runner._decode`): the VAE on the pipeline's latent output, then the
    pipeline's own postprocessing, to a PIL image."""
    pixels = pipe.vae.decode(latents[:1].to(pipe.vae.device), return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pil")[0]


def sequential(engine: Engine, width: int, height: int, count: int) -> dict[str, Any]:
    """`count` plain pipe(...) calls, one after another: what a script without a server does."""
    loaded = engine.loaded
    assert loaded is not None
    seconds = []
    started = time.perf_counter()
    for i in range(count):
        t, _ = _timed(
            loaded.device,
            lambda i=i: loaded.pipe(
                prompt=f"sequential {i} {uuid.uuid4().hex[:6]}",
                height=height,
                width=width,
                num_inference_steps=loaded.default_steps,
                guidance_scale=loaded.default_guidance,
                generator=torch.Generator("cpu").manual_seed(i),
            ),
        )
        seconds.append(t)
    wall = time.perf_counter() - started
    return {"images_per_s": round(count / wall, 3), **_summary(seconds)}


async def scheduled(
    engine: Engine, width: int, height: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """`concurrency` requests at once through the scheduler, `rounds` times."""
    latencies: list[float] = []
    images, wall = 0, 0.0
    taken_before = sum(engine.batch_sizes.values())  # counted when a batch is taken

    async def one(i: int) -> float:
        started = time.perf_counter()
        await engine.generate(_request(width, height, f"scheduled {i} {uuid.uuid4().hex[:6]}", i))
        return time.perf_counter() - started

    for _ in range(rounds):
        started = time.perf_counter()
        latencies += await asyncio.gather(*(one(i) for i in range(concurrency)))
        wall += time.perf_counter() - started
        images += concurrency
    return {
        "images_per_s": round(images / wall, 3),
        "batches": sum(engine.batch_sizes.values()) - taken_before,
        **_summary(latencies),
    }


def _config(args: argparse.Namespace) -> EngineConfig:
    known = {f.name: f for f in fields(EngineConfig)}
    options: dict[str, Any] = {}
    for item in args.option:
        name, _, raw = item.partition("=")
        if name not in known:
            raise SystemExit(f"--option {name}: not an EngineConfig field")
        current = getattr(EngineConfig(demo=True), name)
        if isinstance(current, bool):
            options[name] = raw.strip().lower() in ("1", "true", "yes", "on")
        elif isinstance(current, int):
            options[name] = int(raw)
        else:
            options[name] = raw or None
    random = args.random_weights
    return EngineConfig(
        demo=random is None,
        random_weights=random,
        device=args.device,
        dtype=args.dtype,
        **options,
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = _config(args)
    load_started = time.perf_counter()
    engine = Engine(cfg)
    engine.start()
    if not engine.wait_ready(1800):
        raise SystemExit(f"the engine did not load: {engine.readiness()}")
    loaded = engine.loaded
    assert loaded is not None
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "weights": f"random {cfg.random_weights}" if cfg.random_weights else "demo",
        "device": str(loaded.device),
        "gpu": torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else None,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "steps": loaded.default_steps,
        "max_batch_size": cfg.max_batch_size,
        "options": args.option,
        "load_s": round(time.perf_counter() - load_started, 2),
        "warmup_s": engine.warmup_seconds,
        "sizes": {},
    }
    try:
        for width, height in args.sizes:
            await engine.generate(_request(width, height, "warm-up"))  # first-call costs
            cell: dict[str, Any] = {
                "stages": stages(engine, width, height, args.rounds),
                "sequential": {},
                "scheduled": {},
            }
            for concurrency in args.concurrency:
                cell["sequential"][concurrency] = sequential(engine, width, height, concurrency)
                cell["scheduled"][concurrency] = await scheduled(
                    engine, width, height, concurrency, args.rounds
                )
            report["sizes"][f"{width}x{height}"] = cell
    finally:
        engine.shutdown()
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"\n{report['weights']} weights, {report['device']} {report['gpu'] or ''} "
        f"{report['dtype']}, {report['steps']} steps, batch <= {report['max_batch_size']}, "
        f"options {report['options'] or 'defaults'}",
        "",
        "| size | text enc | denoise | VAE decode | plain call | PNG ms/MP | JPEG ms/MP | "
        "WebP ms/MP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, cell in report["sizes"].items():
        s = cell["stages"]
        per_mp = s["encode_ms_per_mp"]
        lines.append(
            f"| {size} | {s['text_encoding'] * 1000:.1f} ms | {s['denoising'] * 1000:.1f} ms | "
            f"{s['vae_decode'] * 1000:.1f} ms | {s['plain_call'] * 1000:.1f} ms | "
            f"{per_mp['png']} | {per_mp['jpeg']} | {per_mp['webp']} |"
        )
    lines += [
        "",
        "| size | concurrency | sequential img/s | scheduled img/s | ratio | scheduled p50 | "
        "scheduled p99 | batches |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, cell in report["sizes"].items():
        for concurrency, seq in cell["sequential"].items():
            sch = cell["scheduled"][concurrency]
            ratio = sch["images_per_s"] / seq["images_per_s"]
            lines.append(
                f"| {size} | {concurrency} | {seq['images_per_s']} | {sch['images_per_s']} | "
                f"x{ratio:.2f} | {sch['p50_s'] * 1000:.0f} ms | {sch['p99_s'] * 1000:.0f} ms | "
                f"{sch['batches']} |"
            )
    return "\n".join(lines)


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        w, _, h = part.strip().lower().partition("x")
        out.append((int(w), int(h or w)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--demo", action="store_true", help="tiny demo weights (default)")
    weights.add_argument("--random-weights", choices=("small", "full"), default=None)
    parser.add_argument("--sizes", type=_sizes, default=_sizes("512,1024"))
    parser.add_argument(
        "--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, else float32")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--quick", action="store_true", help="CI smoke mode (tiny sizes)")
    parser.add_argument("--json", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.concurrency, args.rounds = _sizes("64,128"), [1, 2], 1
    report = asyncio.run(run(args))
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    print(table(report))


if __name__ == "__main__":
    main()
