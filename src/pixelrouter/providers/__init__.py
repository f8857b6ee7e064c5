"""Providers: the things a request can be sent to (local engine, workers, hosted APIs)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelrouter.config import Settings
    from pixelrouter.providers.base import Provider
    from pixelrouter.providers.config import ProviderConfig


def local_provider(
    settings: Settings,
    *,
    start: bool = True,
    overrides: dict[str, Any] | None = None,
) -> Provider:
    """This process's engine as a provider, configured from `settings`.

    `overrides` may set `slug`, `display_name`, `models` and `price` (from a `[[providers]]`
    table of type `local`). Without the `engine` extra (torch, diffusers) the server still
    starts: the provider is then never ready, and `/ready` and every generation say how to
    install it.
    """
    overrides = overrides or {}
    try:
        from pixelrouter.engine.scheduler import Engine
    except ImportError as exc:
        from pixelrouter.providers.unavailable import UnavailableProvider

        unavailable = UnavailableProvider(
            f"the engine is not installed ({exc.name} is missing): "
            "pip install 'pixelrouter[engine]', or serve with --no-engine"
        )
        unavailable.info = dataclasses.replace(unavailable.info, **overrides)
        return unavailable
    from pixelrouter.providers.local import LocalProvider

    return LocalProvider(Engine(settings.engine_config()), start=start, **overrides)


def build_provider(config: ProviderConfig, settings: Settings, *, start: bool = True) -> Provider:
    """The provider a `[[providers]]` table describes."""
    if config.type == "local":
        overrides: dict[str, Any] = {
            "slug": config.name,
            "models": config.models,
            "price": config.price,
            "zdr": config.zero_data_retention,
        }
        if config.quantization is not None:
            overrides["quantization"] = config.quantization
        if config.display_name != config.name:  # else the engine's name (it names the weights)
            overrides["display_name"] = config.display_name
        return local_provider(settings, start=start, overrides=overrides)
    from pixelrouter.providers.bfl import BFLProvider
    from pixelrouter.providers.openai_images import OpenAIImagesProvider
    from pixelrouter.providers.openrouter import OpenRouterProvider
    from pixelrouter.providers.pixelrouter import PixelrouterProvider

    if config.discovery is not None:
        from pixelrouter.providers.discovery import DiscoveredWorkers

        return DiscoveredWorkers(config)
    kinds = {
        "pixelrouter": PixelrouterProvider,
        "openrouter": OpenRouterProvider,
        "openai-images": OpenAIImagesProvider,
        "bfl": BFLProvider,
    }
    return kinds[config.type](config)


def build_providers(
    configs: list[ProviderConfig], settings: Settings, *, start: bool = True
) -> list[Provider]:
    return [build_provider(config, settings, start=start) for config in configs]
