"""Engine test fixtures: the demo pipeline and started demo engines, all offline on one thread."""

from __future__ import annotations

import os

# Before torch is imported: one thread is ~100x faster for tiny models on these 2-core machines,
# and nothing may touch the Hugging Face hub.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

if importlib.util.find_spec("pixelrouter") is None:  # running from a checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
    # The engine extra is not installed: only the torch-free tests can run.
    collect_ignore_glob = ["test_demo.py", "test_scheduler.py", "test_loading.py", "test_local.py"]
else:
    import torch

    torch.set_num_threads(1)

from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from .helpers import started_engine  # noqa: E402


@pytest.fixture(scope="session")
def demo_pipe() -> Any:
    """A plain demo pipeline: the reference that engine output is compared with."""
    from pixelrouter.engine.demo import build_demo_pipeline

    return build_demo_pipeline()


@pytest.fixture(scope="session")
def engine() -> Iterator[Any]:
    """A demo engine with a short batch window, as served."""
    with started_engine(batch_window_ms=2.0) as engine:
        yield engine


@pytest.fixture(scope="session")
def batch_engine() -> Iterator[Any]:
    """A demo engine that waits (up to 5 s) until 4 compatible images are queued, so tests that
    submit exactly 4 images get one batch without racing the worker."""
    with started_engine(batch_window_ms=5000.0, max_batch_size=4) as engine:
        yield engine
