"""The engine's queue: which jobs wait, in what order, and which of them run together.

Interactive jobs wait ahead of batch jobs (docs/batches.md, "Priority"), each in the order
they came: an interactive request waits at most for the call already running. A job joins
another's pipeline call only when both are batched, of one priority, with equal `BatchKey`s,
within the batch size. The queue is bounded in images; batch jobs never fill it against an
interactive one. Not thread-safe: the engine holds its lock around every call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from pixelrouter.engine.jobs import BatchKey, Job
from pixelrouter.errors import ProviderUnavailable


class JobQueue:
    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self._jobs: deque[Job] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[Job]:
        return iter(self._jobs)

    @property
    def first(self) -> Job:
        return self._jobs[0]

    def images(self) -> int:
        return sum(job.images for job in self._jobs)

    def batch_images(self) -> int:
        return sum(job.images for job in self._jobs if job.request.priority == "batch")

    def add(self, job: Job) -> None:
        """Queue a job behind those of its priority (interactive ones before every batch
        one), or refuse it when the images it would wait behind fill the queue: a 429, not a
        503, since a busy engine is up and must not open its circuit."""
        interactive = job.request.priority == "interactive"
        ahead = sum(1 for j in self._jobs if j.request.priority == "interactive")
        counted = list(self._jobs)[:ahead] if interactive else self._jobs
        queued = sum(j.images for j in counted)
        if queued and queued + job.images > self.max_images:
            raise ProviderUnavailable(
                f"The local engine's queue is full ({queued} images queued, at most "
                f"{self.max_images}); try again in a few seconds.",
                status=429,
            )
        if interactive:
            self._jobs.insert(ahead, job)
        else:
            self._jobs.append(job)

    def remove(self, job: Job) -> bool:
        try:
            self._jobs.remove(job)
        except ValueError:
            return False
        return True

    def clear(self) -> list[Job]:
        """Empty the queue; the jobs that were in it."""
        jobs = list(self._jobs)
        self._jobs.clear()
        return jobs

    @staticmethod
    def joins(first: Job, job: Job) -> bool:
        """Whether `job` may share `first`'s pipeline call: both batched, of one priority."""
        return job.request.batching and job.request.priority == first.request.priority

    def compatible_images(self, first: Job, key_for: Callable[[Job], BatchKey]) -> int:
        """The images that would run in `first`'s call now."""
        key = key_for(first)
        return sum(
            job.images
            for job in self._jobs
            if job is first or (self.joins(first, job) and key_for(job) == key)
        )

    def take(self, limit: int, key_for: Callable[[Job], BatchKey]) -> list[Job]:
        """The first job and every queued job that may join its call, up to `limit` images."""
        first = self._jobs.popleft()
        batch, total = [first], first.images
        if first.request.batching:
            key = key_for(first)
            for job in list(self._jobs):
                if total >= limit:
                    break
                if self.joins(first, job) and key_for(job) == key and total + job.images <= limit:
                    self._jobs.remove(job)
                    batch.append(job)
                    total += job.images
        return batch
