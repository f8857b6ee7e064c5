"""Loading: the real-weights path (from a saved demo pipeline) and its helpful failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pixelrouter.engine.pipeline import EngineConfig, load_pipeline
from pixelrouter.engine.scheduler import Engine
from pixelrouter.errors import EngineLoadError, ProviderUnavailable

from .helpers import make_request, pixels, plain_call


@pytest.fixture(scope="module")
def saved_demo(tmp_path_factory: pytest.TempPathFactory, demo_pipe: Any) -> Path:
    path = tmp_path_factory.mktemp("klein-demo")
    demo_pipe.save_pretrained(path)
    return path


def test_saved_demo_loads_through_the_real_weights_path(saved_demo: Path, demo_pipe: Any) -> None:
    loaded = load_pipeline(EngineConfig(model=str(saved_demo), device="cpu"))
    assert loaded.demo is False
    assert loaded.display_name == "Local"
    assert loaded.is_distilled is True
    assert (loaded.default_steps, loaded.default_guidance) == (4, 1.0)
    assert loaded.max_sequence_length == 512
    assert loaded.text_encoder_out_layers == (9, 18, 27)
    again = plain_call(loaded.pipe, "a lighthouse", seed=3)
    assert np.array_equal(again, plain_call(demo_pipe, "a lighthouse", seed=3))


async def test_engine_serves_a_saved_pipeline(saved_demo: Path, demo_pipe: Any) -> None:
    engine = Engine(EngineConfig(model=str(saved_demo), device="cpu"))
    engine.start()
    try:
        assert engine.wait_ready(60), engine.readiness()
        result = await engine.generate(make_request("a lighthouse", seed=3, batching=False))
        # Not demo weights; and the engine names no provider (the router stamps the one that
        # served the result).
        assert result.provider_name == "" and result.demo is False
        assert np.array_equal(
            pixels(result.images[0].data), plain_call(demo_pipe, "a lighthouse", 3)
        )
    finally:
        engine.shutdown()


def test_base_model_defaults_are_50_steps_guidance_4(saved_demo: Path, tmp_path: Path) -> None:
    index = json.loads((saved_demo / "model_index.json").read_text())
    index["is_distilled"] = False
    base = tmp_path / "base"
    base.mkdir()
    for child in saved_demo.iterdir():
        (base / child.name).symlink_to(child)
    (base / "model_index.json").unlink()
    (base / "model_index.json").write_text(json.dumps(index))
    loaded = load_pipeline(EngineConfig(model=str(base), device="cpu"))
    assert (loaded.is_distilled, loaded.default_steps, loaded.default_guidance) == (False, 50, 4.0)


@pytest.mark.parametrize("model", ["/no/such/klein", "./missing-weights"])
def test_missing_model_directory_says_how_to_get_weights(model: str) -> None:
    with pytest.raises(EngineLoadError) as caught:
        load_pipeline(EngineConfig(model=model, device="cpu"))
    message = caught.value.message
    assert model in message
    assert "huggingface-cli download black-forest-labs/FLUX.2-klein-4B" in message
    assert "--model" in message and "--demo" in message
    assert caught.value.status == 503


def test_a_directory_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EngineLoadError, match="model_index.json"):
        load_pipeline(EngineConfig(model=str(tmp_path), device="cpu"))


def test_uncached_hub_id_offline_fails_with_the_same_help() -> None:
    cfg = EngineConfig(model="black-forest-labs/FLUX.2-klein-4B", local_files_only=True)
    with pytest.raises(EngineLoadError, match="pixelrouter serve --demo"):
        load_pipeline(cfg)


async def test_engine_with_missing_weights_reports_the_reason() -> None:
    engine = Engine(EngineConfig(model="/no/such/klein", device="cpu"))
    engine.start()
    try:
        assert engine.wait_ready(30) is False
        ready, reason = engine.readiness()
        assert ready is False and "huggingface-cli download" in reason
        assert engine.status()["state"] == "failed"
        with pytest.raises(ProviderUnavailable, match="huggingface-cli download"):
            await engine.generate(make_request())
    finally:
        engine.shutdown()
