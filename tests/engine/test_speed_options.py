"""Klein 4B's real configurations with random weights, and the engine's speed options: each keeps
the images what SPEC §2 promises (alone: equal to a plain diffusers call), or is refused with a
reason on a device that cannot run it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pixelrouter.engine.pipeline import (
    DEFAULT_TEXT_ENCODER_OUT_LAYERS,
    EngineConfig,
    check_options,
    trim_text_encoder,
)
from pixelrouter.engine.random_weights import (
    build_random_pipeline,
    build_transformer,
    parameter_counts,
)
from pixelrouter.engine.scheduler import Engine
from pixelrouter.errors import EngineLoadError

from .helpers import make_request, pixels, plain_call, rounding_diff

ROOT = Path(__file__).resolve().parents[2]


def test_full_random_weights_have_klein_4bs_architecture() -> None:
    """The numbers the issue names, read back from the built model, and a 4B-class size."""
    with torch.device("meta"):
        transformer = build_transformer("full")
    config = transformer.config
    assert (config.num_layers, config.num_single_layers) == (5, 20)
    assert (config.num_attention_heads, config.attention_head_dim) == (24, 128)
    assert config.in_channels == 128 and config.joint_attention_dim == 7680
    assert tuple(config.axes_dims_rope) == (32, 32, 32, 32) and config.rope_theta == 2000
    assert config.mlp_ratio == 3.0
    counts = parameter_counts("full")
    assert 3.5e9 < counts["transformer"] < 4.5e9, counts  # klein "4B"
    assert 3.5e9 < counts["text_encoder"] < 4.5e9, counts  # Qwen3-4B
    assert 5e7 < counts["vae"] < 1.5e8, counts


@pytest.fixture(scope="module")
def small_engine() -> Any:
    engine = Engine(EngineConfig(random_weights="small", device="cpu"))
    engine.start()
    assert engine.wait_ready(300), engine.readiness()
    yield engine
    engine.shutdown()


async def test_small_random_weights_serve_and_match_a_plain_call(small_engine: Any) -> None:
    request = make_request("a random-weights check", seed=5, size=64, batching=False)
    result = await small_engine.generate(request)
    image = pixels(result.images[0].data)
    assert image.shape == (64, 64, 3)
    expected = plain_call(small_engine.loaded.pipe, request.prompt, 5, size=64)
    assert np.array_equal(image, expected)
    assert "random klein 4B weights, small" in small_engine.loaded.display_name


def test_the_trimmed_text_encoder_gives_bit_equal_embeddings() -> None:
    pipe = build_random_pipeline("small", dtype=torch.float32)
    kwargs = {
        "prompt": "a lighthouse at dusk",
        "device": torch.device("cpu"),
        "max_sequence_length": 64,
        "text_encoder_out_layers": DEFAULT_TEXT_ENCODER_OUT_LAYERS,
    }
    with torch.no_grad():
        whole, _ = pipe.encode_prompt(**kwargs)
        trim_text_encoder(pipe.text_encoder, DEFAULT_TEXT_ENCODER_OUT_LAYERS)
        trimmed, _ = pipe.encode_prompt(**kwargs)
    assert len(pipe.text_encoder.model.layers) == max(DEFAULT_TEXT_ENCODER_OUT_LAYERS) + 1
    assert torch.equal(whole, trimmed)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"fp8": True}, "compute capability 8.9"),
        ({"cuda_graphs": True}, "CUDA graphs need a CUDA device"),
        ({"overlap_decode": True, "cpu_offload": True}, "cannot be combined with cpu_offload"),
        ({"random_weights": "huge"}, "Unknown random-weights size"),
    ],
)
def test_options_this_device_cannot_run_are_refused_with_a_reason(
    options: dict[str, Any], words: str
) -> None:
    with pytest.raises(EngineLoadError) as caught:
        check_options(EngineConfig(demo=True, **options), torch.device("cpu"))
    assert words in caught.value.message


async def test_overlapped_decode_and_static_shapes_keep_the_images(demo_pipe: Any) -> None:
    """Decode on its own thread and batches padded to a power of two: a lone request still
    equals a plain call, and a batch of 3 (run as 4) stays within SPEC §2's rounding bound."""
    engine = Engine(
        EngineConfig(
            demo=True,
            device="cpu",
            overlap_decode=True,
            static_shapes=True,
            batch_window_ms=3000.0,
            max_batch_size=4,
        )
    )
    engine.start()
    try:
        assert engine.wait_ready(120), engine.readiness()
        assert engine.cfg.batch_buckets() == (1, 2, 4)
        alone = make_request("overlap alone", seed=3, size=64, batching=False)
        result = await engine.generate(alone)
        assert np.array_equal(
            pixels(result.images[0].data), plain_call(demo_pipe, alone.prompt, 3, size=64)
        )
        batch = [make_request(f"padded {i}", seed=10 + i, size=64) for i in range(3)]
        before = engine.batches_run
        results = await asyncio.gather(*(engine.generate(r) for r in batch))
        assert engine.batches_run == before + 1
        for request, result in zip(batch, results, strict=True):
            worst, _ = rounding_diff(
                pixels(result.images[0].data),
                plain_call(demo_pipe, request.prompt, request.seed, size=64),
            )
            assert worst <= 2
    finally:
        engine.shutdown()


def test_the_engine_benchmark_runs_in_its_short_mode(tmp_path: Path) -> None:
    """bench/engine.py --quick, as CI runs it: every stage and cell measured, JSON written."""
    out = tmp_path / "engine.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "engine.py"), "--quick", "--json", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["weights"] == "demo" and set(report["sizes"]) == {"64x64", "128x128"}
    for cell in report["sizes"].values():
        stages = cell["stages"]
        for stage in ("text_encoding", "denoising", "vae_decode", "plain_call"):
            assert stages[stage] > 0
        assert set(stages["encode_ms_per_mp"]) == {"png", "jpeg", "webp"}
        for concurrency in ("1", "2"):
            assert cell["sequential"][concurrency]["images_per_s"] > 0
            scheduled = cell["scheduled"][concurrency]
            assert scheduled["images_per_s"] > 0 and scheduled["batches"] >= 1
    assert "| size | concurrency |" in done.stdout
