"""The local inference engine: the diffusers FLUX.2 [klein] pipeline behind a batching scheduler.

Importing this package does not import torch; the names below load their modules on first use.
"""

from __future__ import annotations

import os
from importlib import import_module

# MKL (torch's CPU BLAS) picks its code path by the memory alignment of each call's arrays
# unless told otherwise, so the same request could come out 1/255 different in a few values
# depending on what else the process had allocated (seen with requests queued behind others).
# Strict conditional numerical reproducibility keeps the fastest instructions and makes the
# result independent of alignment; MKL reads it once, before torch's first call, so it is set
# here, before any module of the engine imports torch. An operator's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
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
