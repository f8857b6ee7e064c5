"""LoRA adapters in the engine: diffusers' own loading, exact bytes alone, one adapter set per
batch, a bounded number loaded, refusals at registration."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixelrouter.errors import InvalidRequest
from pixelrouter.loras import LoraRegistry, LoraSpec
from pixelrouter.types import LoraChoice

from .helpers import make_request, pixels, plain_call, rounding_diff
from .loras_helpers import make_adapter

MAX_ROUNDING = 2  # SPEC §2: batched images differ from alone only by rounding
MAX_DIFFERING_FRACTION = 0.01


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {name: make_adapter(root / name, seed) for seed, name in enumerate("abc", start=1)}


def _engine(registry: LoraRegistry, **overrides: Any) -> Any:
    from pixelrouter.engine.pipeline import EngineConfig
    from pixelrouter.engine.scheduler import Engine

    engine = Engine(EngineConfig(demo=True, device="cpu", loras=registry, **overrides))
    engine.start()
    assert engine.wait_ready(120), engine.readiness()
    return engine


@pytest.fixture(scope="module")
def lora_engine(adapter_dirs: dict[str, Path]) -> Iterator[Any]:
    """Three adapters registered, at most two loaded at once."""
    registry = LoraRegistry(LoraSpec(name, str(path)) for name, path in adapter_dirs.items())
    engine = _engine(registry, batch_window_ms=20.0, max_batch_size=4, max_loaded_loras=2)
    yield engine
    engine.shutdown()


def plain_with(
    adapter_dirs: dict[str, Path], loras: list[tuple[str, float]], prompt: str, seed: int
) -> np.ndarray:
    """A plain diffusers call with the adapters loaded by `load_lora_weights` at these scales."""
    from pixelrouter.engine.demo import build_demo_pipeline

    pipe: Any = build_demo_pipeline()
    for name, _ in loras:
        pipe.load_lora_weights(str(adapter_dirs[name]), adapter_name=name)
    if loras:
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[s for _, s in loras])
    return plain_call(pipe, prompt, seed)


def _request(prompt: str, seed: int, loras: list[tuple[str, float]], **fields: Any) -> Any:
    return make_request(
        prompt, seed=seed, loras=tuple(LoraChoice(n, s) for n, s in loras), **fields
    )


async def test_registration_reports_rank_and_dtype(lora_engine: Any) -> None:
    check = lora_engine.cfg.loras.check_of("a")
    assert check.ok and check.rank == 4 and check.dtype == "float32"
    assert "transformer_blocks.0.attn.to_q" in check.targets
    assert "transformer_blocks.0.ff.linear_in" in check.targets
    assert lora_engine.status()["loras"]["capacity"] == 2


async def test_an_adapter_changes_the_image(lora_engine: Any) -> None:
    base = await lora_engine.generate(make_request("a lighthouse", seed=3))
    styled = await lora_engine.generate(_request("a lighthouse", 3, [("a", 1.0)]))
    worst, fraction = rounding_diff(pixels(base.images[0].data), pixels(styled.images[0].data))
    assert fraction > 0.5 and worst > 10


async def test_scale_zero_equals_the_base_bytes(lora_engine: Any) -> None:
    base = await lora_engine.generate(make_request("a lighthouse", seed=4, batching=False))
    # Handed to the engine as is (the edges drop it): the adapter at 0 adds nothing.
    zero = await lora_engine.generate(_request("a lighthouse", 4, [("a", 0.0)], batching=False))
    assert zero.images[0].data == base.images[0].data
    # As the edges resolve it: scale 0 is dropped, so the request is a base request.
    registry = lora_engine.cfg.loras
    assert registry.resolve("black-forest-labs/flux.2-klein-4b", [("a", 0)], "loras") == ()


async def test_alone_equals_a_plain_diffusers_call_with_the_adapter(
    lora_engine: Any, adapter_dirs: dict[str, Path]
) -> None:
    result = await lora_engine.generate(_request("a red kite", 9, [("b", 0.8)], batching=False))
    expected = plain_with(adapter_dirs, [("b", 0.8)], "a red kite", 9)
    assert np.array_equal(pixels(result.images[0].data), expected)


async def test_two_adapters_in_one_request_equal_the_plain_call(
    lora_engine: Any, adapter_dirs: dict[str, Path]
) -> None:
    loras = [("c", 0.5), ("a", -0.7)]
    result = await lora_engine.generate(_request("two kites", 12, loras, batching=False))
    expected = plain_with(adapter_dirs, loras, "two kites", 12)
    assert np.array_equal(pixels(result.images[0].data), expected)


async def _references(adapter_dirs: dict[str, Path], wanted: list[Any]) -> list[np.ndarray]:
    cache: dict[Any, np.ndarray] = {}
    out = []
    for prompt, seed, loras in wanted:
        key = (prompt, seed, tuple(loras))
        if key not in cache:
            cache[key] = await asyncio.to_thread(plain_with, adapter_dirs, loras, prompt, seed)
        out.append(cache[key])
    return out


def _assert_batches_never_mix(engine: Any, requests: list[Any]) -> None:
    by_batch: dict[float, set[tuple[LoraChoice, ...]]] = {}
    for request in requests:
        job = engine.job(request.id)
        by_batch.setdefault(job.started_at, set()).add(job.key.loras)
    assert all(len(sets) == 1 for sets in by_batch.values()), by_batch


async def test_two_adapters_interleaved_in_one_queue(
    lora_engine: Any, adapter_dirs: dict[str, Path]
) -> None:
    wanted = [("a harbour", 20 + i, [("a", 1.0)] if i % 2 else [("b", 1.0)]) for i in range(8)]
    requests = [_request(p, s, loras) for p, s, loras in wanted]
    results = await asyncio.gather(*(lora_engine.generate(r) for r in requests))
    _assert_batches_never_mix(lora_engine, requests)
    assert len({lora_engine.job(r.id).started_at for r in requests}) < len(requests), (
        "requests with the same adapter shared batches"
    )
    for result, expected in zip(results, await _references(adapter_dirs, wanted), strict=True):
        worst, fraction = rounding_diff(pixels(result.images[0].data), expected)
        assert worst <= MAX_ROUNDING and fraction < MAX_DIFFERING_FRACTION


async def test_more_adapters_than_loaded_under_concurrent_load(
    lora_engine: Any, adapter_dirs: dict[str, Path]
) -> None:
    evictions = lora_engine.status()["loras"]["evictions"]
    sets: list[list[tuple[str, float]]] = [[("a", 1.0)], [("b", 0.6)], [("c", 1.2)], []]
    wanted = [("a mountain", 40 + i, sets[i % 4]) for i in range(12)]
    requests = [_request(p, s, loras) for p, s, loras in wanted]
    results = await asyncio.gather(*(lora_engine.generate(r) for r in requests))
    _assert_batches_never_mix(lora_engine, requests)
    status = lora_engine.status()["loras"]
    assert len(status["loaded"]) <= 2 and status["evictions"] > evictions
    for result, expected in zip(results, await _references(adapter_dirs, wanted), strict=True):
        worst, fraction = rounding_diff(pixels(result.images[0].data), expected)
        assert worst <= MAX_ROUNDING and fraction < MAX_DIFFERING_FRACTION


async def test_registration_refuses_a_corrupt_file(lora_engine: Any, tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    check = await lora_engine.register_lora(LoraSpec("broken", str(corrupt)))
    assert not check.ok and "not a readable LoRA safetensors file" in check.reason
    assert lora_engine.cfg.loras.get("broken") is None
    missing = await lora_engine.register_lora(LoraSpec("gone", str(tmp_path / "nothing")))
    assert not missing.ok and "no file or directory" in missing.reason


async def test_registration_refuses_an_adapter_for_another_architecture(
    lora_engine: Any, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    # Targets that exist, with the widths of a bigger transformer (klein 4B's 3072).
    wide = {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4),
    }
    save_file(wide, tmp_path / "wide.safetensors")
    check = await lora_engine.register_lora(LoraSpec("wide", str(tmp_path / "wide.safetensors")))
    assert not check.ok and "another model" in check.reason and "to_q" in check.reason
    # Targets this transformer does not have (a deeper model's block 7).
    deep = {
        "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(4, 16),
        "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(16, 4),
    }
    save_file(deep, tmp_path / "deep.safetensors")
    check = await lora_engine.register_lora(LoraSpec("deep", str(tmp_path / "deep.safetensors")))
    assert not check.ok and "does not have" in check.reason
    # Nothing was left behind: base requests are unchanged.
    assert lora_engine.cfg.loras.get("wide") is None and lora_engine.cfg.loras.get("deep") is None


async def test_an_adapter_refused_at_start_is_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    registry = LoraRegistry([LoraSpec("bad", str(tmp_path / "bad.safetensors"))])
    engine = _engine(registry)
    try:
        check = registry.check_of("bad")
        assert check is not None and not check.ok
        with pytest.raises(InvalidRequest, match="refused when it was registered"):
            registry.resolve("black-forest-labs/flux.2-klein-4b", [("bad", 1.0)], "loras")
        with pytest.raises(InvalidRequest, match="not registered"):
            await engine.generate(_request("x", 1, [("bad", 1.0)]))
        ok = await engine.generate(make_request("still serving", seed=1))
        assert len(ok.images) == 1
    finally:
        engine.shutdown()
