"""The `local` provider wraps the engine behind the `Provider` protocol."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pixelrouter.engine.pipeline import EngineConfig
from pixelrouter.engine.scheduler import Engine
from pixelrouter.errors import ProviderUnavailable
from pixelrouter.providers.base import Provider
from pixelrouter.providers.local import LocalProvider
from pixelrouter.routing.router import Router

from .helpers import make_request

SRC = Path(__file__).resolve().parents[2] / "src"


async def test_local_provider_generates_and_reports() -> None:
    provider = LocalProvider(config=EngineConfig(demo=True, device="cpu"))
    try:
        assert isinstance(provider, Provider)
        assert provider.info.slug == "local" and provider.info.kind == "local"
        assert provider.engine.wait_ready(60)
        assert provider.readiness() == (True, "ready")
        assert provider.info.display_name == "Local (demo weights)"
        assert provider.info.quantization == "fp32"
        assert provider.count_prompt_tokens("hello") == 5
        # The router names a result after the provider that served it.
        result = await Router([provider]).route(make_request("a pear"))
        assert result.provider_slug == "local" and len(result.images) == 1
        assert provider.status().queue_depth == 0
    finally:
        await provider.aclose()
    assert provider.readiness()[0] is False
    with pytest.raises(ProviderUnavailable, match="shut down"):
        await provider.generate(make_request("too late"))


async def test_not_started_or_failed_engines_are_unavailable() -> None:
    idle = LocalProvider(Engine(EngineConfig(demo=True, device="cpu")), start=False)
    assert idle.count_prompt_tokens("hello") is None
    with pytest.raises(ProviderUnavailable, match="not started"):
        await idle.generate(make_request())
    broken = LocalProvider(config=EngineConfig(model="/no/such/klein", device="cpu"))
    try:
        broken.engine.wait_ready(30)
        with pytest.raises(ProviderUnavailable, match="huggingface-cli download"):
            await broken.generate(make_request())
        assert broken.info.display_name == "Local"
    finally:
        await broken.aclose()


def test_modules_import_without_torch() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'diffusers', 'transformers'):\n"
        "    sys.modules[name] = None\n"
        "import pixelrouter.engine, pixelrouter.providers.local\n"
        "from pixelrouter.engine import EngineConfig\n"
        "from pixelrouter.errors import EngineLoadError\n"
        "EngineConfig(demo=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
