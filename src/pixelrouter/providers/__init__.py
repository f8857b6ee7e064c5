"""Providers: the things a request can be sent to (local engine, workers, hosted APIs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelrouter.config import Settings
    from pixelrouter.providers.base import Provider


def local_provider(settings: Settings, *, start: bool = True) -> Provider:
    """This process's engine as a provider, configured from `settings`.

    Without the `engine` extra (torch, diffusers) the server still starts: the provider is
    then never ready, and `/ready` and every generation say how to install it.
    """
    try:
        from pixelrouter.engine.pipeline import EngineConfig
        from pixelrouter.engine.scheduler import Engine
    except ImportError as exc:
        from pixelrouter.providers.unavailable import UnavailableProvider

        return UnavailableProvider(
            f"the engine is not installed ({exc.name} is missing): "
            "pip install 'pixelrouter[engine]', or serve with --no-engine"
        )
    config: dict[str, Any] = {
        "model": settings.model,
        "demo": settings.demo,
        "device": settings.device,
        "dtype": settings.dtype,
        "max_batch_size": settings.max_batch_size,
    }
    from pixelrouter.providers.local import LocalProvider

    return LocalProvider(Engine(EngineConfig(**config)), start=start)
