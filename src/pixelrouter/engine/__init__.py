"""The local inference engine: the diffusers FLUX.2 [klein] pipeline behind a batching scheduler.

Importing this package does not import torch; the names below load their modules on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Engine": "pixelrouter.engine.scheduler",
    "JobState": "pixelrouter.engine.scheduler",
    "BatchKey": "pixelrouter.engine.scheduler",
    "EngineConfig": "pixelrouter.engine.pipeline",
    "EngineLoadError": "pixelrouter.engine.pipeline",
    "LoadedPipeline": "pixelrouter.engine.pipeline",
    "load_pipeline": "pixelrouter.engine.pipeline",
    "build_demo_pipeline": "pixelrouter.engine.demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
