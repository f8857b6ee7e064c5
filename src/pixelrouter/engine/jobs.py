"""What the engine's queue holds: a request as a `Job` (queued → running → done | cancelled |
failed), the `BatchKey` jobs must share to share a pipeline call, and a `Task` for the worker
thread between batches (registering or removing an adapter)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from pixelrouter.types import ImageRequest, ImageResult, LoraChoice, ProgressCallback


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class BatchKey:
    """Jobs with equal keys can share one pipeline call."""

    model: str
    width: int
    height: int
    steps: int
    guidance: float
    max_sequence_length: int
    reference_digests: tuple[str, ...]
    # the adapters and scales, in the request's order: different sets never share a call
    loras: tuple[LoraChoice, ...] = ()


@dataclass(eq=False)
class Job:
    """One request inside the engine."""

    request: ImageRequest
    loop: asyncio.AbstractEventLoop
    # None once its awaiter has the outcome: the job stays for look-ups, its pixels do not.
    future: asyncio.Future[ImageResult] | None
    on_progress: ProgressCallback | None = None
    state: JobState = JobState.QUEUED
    key: BatchKey | None = None  # set by the worker: the defaults are known once loaded
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def images(self) -> int:
        return self.request.n

    @property
    def total_steps(self) -> int:
        """Progress total: a job that runs alone does one pipeline call per image."""
        steps = self.key.steps if self.key else 0
        return steps if self.request.batching else steps * self.images


@dataclass(eq=False)
class Task:
    """Work for the worker thread between batches (registering or removing an adapter)."""

    run: Any  # () -> result
    # () -> bool, asked under the lock between batches: False keeps the task (and those after
    # it) waiting while batches run; None: run at the next gap
    when: Any = None
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
