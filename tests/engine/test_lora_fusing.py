"""One adapter fused into the model (`[server] fuse_lora`): diffusers' `fuse_lora` at the
adapter's default scale, PEFT's layers gone, the image that of the unfused adapter up to
rounding, and every other request refused with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixelrouter.errors import InvalidRequest
from pixelrouter.loras import LoraRegistry, LoraSpec
from pixelrouter.types import LoraChoice

from .helpers import make_request, pixels, plain_call
from .loras_helpers import make_adapter

MODEL = "black-forest-labs/flux.2-klein-4b"
SCALE = 0.8  # not 1: a scale applied twice (or not at all) would show


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fused-loras")
    return {name: make_adapter(root / name, seed) for seed, name in enumerate(("ink", "glass"), 1)}


def _engine(registry: LoraRegistry, fuse: str) -> Any:
    from pixelrouter.engine.pipeline import EngineConfig
    from pixelrouter.engine.scheduler import Engine

    engine = Engine(EngineConfig(demo=True, device="cpu", loras=registry, fuse_lora=fuse))
    engine.start()
    engine.wait_ready(120)
    return engine


@pytest.fixture(scope="module")
def fused_engine(adapter_dirs: dict[str, Path]) -> Iterator[Any]:
    registry = LoraRegistry(
        [
            LoraSpec("ink", str(adapter_dirs["ink"]), default_scale=SCALE),
            LoraSpec("glass", str(adapter_dirs["glass"])),
        ]
    )
    engine = _engine(registry, "ink")
    assert engine.readiness()[0], engine.readiness()
    yield engine
    engine.shutdown()


def _plain(adapter_dirs: dict[str, Path], loras: list[tuple[str, float]], seed: int) -> np.ndarray:
    """A plain diffusers call, the adapters loaded unfused by `load_lora_weights`."""
    from pixelrouter.engine.demo import build_demo_pipeline

    pipe: Any = build_demo_pipeline()
    for name, _ in loras:
        pipe.load_lora_weights(str(adapter_dirs[name]), adapter_name=name)
    if loras:
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[s for _, s in loras])
    return plain_call(pipe, "a paper boat", seed)


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


async def test_the_fused_image_is_the_unfused_one_up_to_rounding(
    fused_engine: Any, adapter_dirs: dict[str, Path]
) -> None:
    request = make_request(
        "a paper boat", seed=6, batching=False, loras=(LoraChoice("ink", SCALE),)
    )
    fused = pixels((await fused_engine.generate(request)).images[0].data)
    unfused = _plain(adapter_dirs, [("ink", SCALE)], 6)  # what an unfused engine makes, exactly
    base = _plain(adapter_dirs, [], 6)
    adapter_effect = _mean_diff(unfused, base)
    assert adapter_effect > 5  # the adapter visibly changes the image
    # Not byte-equal in general (W + s*BA is summed in the model's dtype), but close: the
    # difference is rounding, far below what the adapter itself changes.
    assert _mean_diff(fused, unfused) < adapter_effect / 50
    assert _mean_diff(fused, base) > adapter_effect / 2


async def test_peft_layers_are_gone_and_the_status_says_fused(fused_engine: Any) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    transformer = fused_engine.loaded.pipe.transformer
    assert not any(isinstance(m, BaseTunerLayer) for m in transformer.modules())
    assert fused_engine.status()["loras"]["fused"] == {"name": "ink", "scale": SCALE}
    rows = {row["name"]: row for row in fused_engine.cfg.loras.describe()}
    assert rows["ink"]["fused"] is True and rows["ink"]["status"] == "ready"
    assert rows["glass"]["fused"] is False and rows["glass"]["status"] == "refused"
    assert "fused into its weights at scale 0.8" in rows["glass"]["reason"]


async def test_every_other_request_is_refused_with_the_reason(fused_engine: Any) -> None:
    says = f"serves only {MODEL}:ink .*fused into its weights at scale 0.8"
    with pytest.raises(InvalidRequest, match=says):  # the base model
        await fused_engine.generate(make_request("a paper boat", seed=1))
    with pytest.raises(InvalidRequest, match=says):  # the adapter at another scale
        await fused_engine.generate(make_request(loras=(LoraChoice("ink", 0.5),)))
    with pytest.raises(InvalidRequest, match="'glass' is not registered: .*fused"):
        await fused_engine.generate(make_request(loras=(LoraChoice("glass", 1.0),)))
    # The edges resolve a request the same way before anything is queued or charged.
    registry = fused_engine.cfg.loras
    with pytest.raises(InvalidRequest, match="'glass' was refused when it was registered"):
        registry.resolve(MODEL, [("glass", None)], "loras")
    with pytest.raises(InvalidRequest, match=says):
        registry.check_fused(MODEL, ())
    registry.check_fused(MODEL, registry.resolve(MODEL, [("ink", None)], "loras"))


async def test_no_other_adapter_can_be_registered(
    fused_engine: Any, adapter_dirs: dict[str, Path]
) -> None:
    check = await fused_engine.register_lora(LoraSpec("late", str(adapter_dirs["glass"])))
    assert not check.ok and "serves only the adapter 'ink'" in check.reason
    assert fused_engine.cfg.loras.get("late") is None


def test_fusing_an_adapter_refused_at_registration_stops_the_engine(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    registry = LoraRegistry([LoraSpec("bad", str(tmp_path / "bad.safetensors"))])
    engine = _engine(registry, "bad")
    try:
        ready, reason = engine.readiness()
        assert not ready and engine.status()["state"] == "failed"
        assert "fuse_lora names the adapter 'bad', which was refused" in reason
        assert "not a readable LoRA safetensors file" in reason
    finally:
        engine.shutdown()
