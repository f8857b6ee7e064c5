"""The engine: a queue of jobs, batching by `BatchKey`, one worker thread that owns the pipeline.

A request becomes a `Job` (queued → running → done | cancelled | failed). The worker takes the
first job of the queue (`queue.py`: interactive jobs ahead of batch ones) and every queued job
that may share its call (its `BatchKey`, its priority), up to `max_batch_size` images, and
gives the batch to the `Runner` (`runner.py`: prompt embeddings, denoising, decoding, encoding),
which reports back through hooks; the scheduler moves the jobs' states and resolves the futures
their callers await. A request for more images than one batch holds runs as several jobs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from typing import Any

from pixelrouter.engine.jobs import BatchKey, Job, JobState, Task
from pixelrouter.engine.parts import generate_in_parts
from pixelrouter.engine.pipeline import EngineConfig, LoadedPipeline, describe_error, load_pipeline
from pixelrouter.engine.queue import JobQueue
from pixelrouter.engine.runner import SHUT_DOWN_WHILE_RUNNING, Hooks, PromptCache, Runner
from pixelrouter.errors import EngineLoadError, ProviderUnavailable
from pixelrouter.loras import LoraCheck, LoraSpec
from pixelrouter.types import (
    ImageRequest,
    ImageResult,
    ProgressCallback,
    ProgressEvent,
)

logger = logging.getLogger(__name__)

RECENT_JOBS = 1024  # finished jobs kept for `job()` look-ups
EMA_WEIGHT = 0.3  # weight of the newest batch duration in the wait estimate
BATCH_GATHER_S = 0.05  # how long a batch job waits for compatible ones before it runs


class Engine:
    """Runs image requests on the local pipeline; `generate` is awaited on the event loop."""

    def __init__(self, cfg: EngineConfig | None = None) -> None:
        self.cfg = cfg or EngineConfig()
        self._cond = threading.Condition()
        self._queue = JobQueue(self.cfg.max_queue_images)
        self._tasks: deque[Task] = deque()
        self._running: list[Job] = []
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._state = "not_started"  # → loading → ready | failed; stopped after shutdown
        self._error: str | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._loaded: LoadedPipeline | None = None
        self._runner: Runner[Job] | None = None  # made once the pipeline is loaded
        self._worker: threading.Thread | None = None
        self._batch_seconds: float | None = None
        self.batches_run = 0
        self.batches_aborted = 0
        self.jobs_started = 0
        self.jobs_cancelled = 0
        self.images_generated = 0
        self.batch_sizes: Counter[int] = Counter()  # images per batch taken: /metrics reads it
        self.warmup_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Load the pipeline and serve on one background thread; returns at once."""
        with self._cond:
            if self._worker is not None:
                return
            self._state = "loading"
            self._worker = threading.Thread(
                target=self._serve, name="pixelrouter-engine", daemon=True
            )
        self._worker.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading ended; True when the engine is ready."""
        self._ready.wait(timeout)
        return self._state == "ready"

    def shutdown(self, timeout: float = 30.0) -> None:
        """Fail queued jobs, abort the running batch, stop the worker and the encoders."""
        with self._cond:
            if self._state == "stopped":
                return
            self._stopping = True
            queued = self._queue.clear()
            tasks = list(self._tasks)
            self._tasks.clear()
            self._cond.notify_all()
        for task in tasks:
            task.future.set_exception(ProviderUnavailable("The local engine shut down."))
        for job in queued:
            self._fail(job, ProviderUnavailable("The local engine shut down before this ran."))
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        runner = self._runner
        if runner is not None:
            runner.close()
        with self._cond:
            self._state = "stopped"
        self._ready.set()

    @property
    def state(self) -> str:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def loaded(self) -> LoadedPipeline | None:
        return self._loaded

    @property
    def display_name(self) -> str:
        if self._loaded is not None:
            return self._loaded.display_name
        return "Local (demo weights)" if self.cfg.demo else "Local"

    def readiness(self) -> tuple[bool, str]:
        state = self._state
        if state == "ready":
            return True, "ready"
        if state == "loading":
            return False, "engine is loading the model"
        if state == "failed":
            return False, self._error or "engine failed to load"
        if state == "stopped":
            return False, "engine is shut down"
        return False, "engine is not started"

    def status(self) -> dict[str, Any]:
        runner = self._runner
        cache = runner.prompt_cache.stats() if runner is not None else PromptCache(0).stats()
        with self._cond:
            queued_images = self._queue.images()
            running_images = sum(job.images for job in self._running)
            batches_ahead = math.ceil(queued_images / max(1, self.cfg.max_batch_size))
            batches_ahead += 1 if self._running else 0
            return {
                "state": self._state,
                "queue_depth": len(self._queue),
                "queued_images": queued_images,
                "batch_queued_images": self._queue.batch_images(),
                "running_batch": len(self._running),
                "running_images": running_images,
                "max_batch_size": self.cfg.max_batch_size,
                "max_queue_images": self.cfg.max_queue_images,
                "queue_full": queued_images >= self.cfg.max_queue_images,
                "estimated_wait_s": round((self._batch_seconds or 0.0) * batches_ahead, 3),
                "batches_run": self.batches_run,
                "batches_aborted": self.batches_aborted,
                "jobs_started": self.jobs_started,
                "jobs_cancelled": self.jobs_cancelled,
                "images_generated": self.images_generated,
                "batch_sizes": {str(size): n for size, n in sorted(self.batch_sizes.items())},
                "prompt_cache": cache,
                "loras": runner.adapters.stats() if runner is not None else None,
                "demo": self.cfg.demo,
                "error": self._error,
            }

    def count_prompt_tokens(self, prompt: str) -> int | None:
        """Tokens of the prompt text (no chat template) by the loaded tokenizer; None before."""
        runner = self._runner
        return runner.count_prompt_tokens(prompt) if runner is not None else None

    def job(self, request_id: str) -> Job | None:
        """A recent job by request id (queued, running or finished), for status and tests."""
        with self._cond:
            return self._recent.get(request_id)

    # ------------------------------------------------------------------ the asyncio side

    async def generate(
        self, request: ImageRequest, on_progress: ProgressCallback | None = None
    ) -> ImageResult:
        """Queue the request and wait for its images. Cancelling the awaiting task cancels the
        job: a queued job then never runs, a running one is dropped from its batch. A request
        for more images than one batch holds runs as several jobs (`parts.py`)."""
        if request.n > self.cfg.max_batch_size:
            limit = self.cfg.max_batch_size
            return await generate_in_parts(self._generate_job, request, limit, on_progress)
        return await self._generate_job(request, on_progress)

    async def _generate_job(
        self, request: ImageRequest, on_progress: ProgressCallback | None = None
    ) -> ImageResult:
        loop = asyncio.get_running_loop()
        job = Job(request=request, loop=loop, future=loop.create_future(), on_progress=on_progress)
        with self._cond:
            if self._state == "failed":
                raise ProviderUnavailable(self._error or "The local engine failed to load.")
            if self._stopping or self._state in ("stopped", "not_started"):
                raise ProviderUnavailable("The local engine is not running.")
            if self._state == "ready":
                self._check_loras(request)
            self._queue.add(job)  # interactive jobs ahead of batch ones; a 429 when full
            self._recent[request.id] = job
            while len(self._recent) > RECENT_JOBS:
                self._recent.popitem(last=False)
            self._cond.notify_all()
        future = job.future
        assert future is not None
        try:
            return await future
        except asyncio.CancelledError:
            self._cancel(job)
            raise
        finally:
            job.future = None
            job.request = dataclasses.replace(job.request, references=())

    def _check_loras(self, request: ImageRequest) -> None:
        """The edges check a request's adapters first; this guards the engine's own door."""
        self.cfg.loras.check_served(request.model, request.loras)

    async def register_lora(self, spec: LoraSpec) -> LoraCheck:
        """Check `spec` on the worker thread between batches (it loads into the pipeline) and,
        when accepted, add it to the registry; a refusal changes nothing and says why."""
        task = Task(lambda: self._register(spec))
        with self._cond:
            if self._state != "ready" or self._stopping:
                raise ProviderUnavailable("The local engine is not ready to register adapters.")
            self._tasks.append(task)
            self._cond.notify_all()
        return await asyncio.wrap_future(task.future)  # type: ignore[no-any-return]

    def unregister_lora(self, name: str) -> concurrent.futures.Future[None]:
        """Remove the adapter from the registry at once (a request naming it from now on is
        refused) and unload it on the worker thread once no queued request uses it (those
        queued before finish with it); the future is done when it is unloaded."""
        with self._cond:
            self.cfg.loras.remove(name)
            if self._state not in ("loading", "ready") or self._stopping:
                done: concurrent.futures.Future[None] = concurrent.futures.Future()
                done.set_result(None)
                return done
            task = Task(lambda: self._forget(name), when=lambda: not self._queued_with(name))
            self._tasks.append(task)
            self._cond.notify_all()
        return task.future

    def _queued_with(self, name: str) -> bool:
        return any(choice.name == name for job in self._queue for choice in job.request.loras)

    def _forget(self, name: str) -> None:
        runner = self._runner
        if runner is not None:
            runner.adapters.forget(name)
            logger.info("LoRA adapter %s removed", name)

    def _register(self, spec: LoraSpec) -> LoraCheck:
        runner = self._runner
        assert runner is not None
        return runner.adapters.register(spec, self.cfg.loras)

    def _cancel(self, job: Job) -> None:
        with self._cond:
            if job.state is JobState.QUEUED:
                self._queue.remove(job)
            elif job.state is not JobState.RUNNING:
                return
            job.state = JobState.CANCELLED
            job.finished_at = time.monotonic()
            self.jobs_cancelled += 1
            self._cond.notify_all()

    def _resolve(self, job: Job, result: ImageResult | None, error: Exception | None) -> None:
        """Hand the outcome to the job's awaiter, on its event loop."""

        def resolve() -> None:
            future = job.future
            if future is None or future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        # A closed loop (RuntimeError) means nobody waits for this job any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(resolve)

    def _emit_progress(self, job: Job, steps_done: int) -> None:
        callback = job.on_progress
        if callback is None or job.state is not JobState.RUNNING:
            return
        event = ProgressEvent(job.request.id, steps_done, job.total_steps)

        def deliver() -> None:
            if job.state is JobState.CANCELLED:
                return
            try:
                callback(event)
            except Exception:
                logger.exception("progress callback of %s failed", event.request_id)

        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(deliver)

    def _fail(self, job: Job, error: Exception) -> None:
        with self._cond:
            if job.state in (JobState.DONE, JobState.CANCELLED, JobState.FAILED):
                return
            job.state = JobState.FAILED
            job.finished_at = time.monotonic()
        self._resolve(job, None, error)

    # ------------------------------------------------------------------ the worker thread

    def _serve(self) -> None:
        try:
            loaded = load_pipeline(self.cfg)
        except EngineLoadError as exc:
            self._fail_load(exc.message)
            return
        except Exception as exc:
            logger.exception("loading the pipeline failed")
            self._fail_load(f"Loading the pipeline failed ({describe_error(exc, 200)}).")
            return
        self._loaded = loaded
        self._runner = runner = Runner(loaded, self.cfg, self._hooks())
        try:
            self.warmup_seconds = runner.warm_up()
        except Exception as exc:
            logger.exception("warming up the pipeline failed")
            self._fail_load(f"Warming up the pipeline failed ({describe_error(exc, 200)}).")
            return
        # Before ready: a request never meets an unchecked adapter, nor one to be fused unfused.
        error = runner.adapters.start(self.cfg.loras, self._register, self.cfg.fuse_lora)
        if error is not None:
            self._fail_load(error)
            return
        with self._cond:
            if self._state == "loading":
                self._state = "ready"
        self._ready.set()
        logger.info("engine ready: %s on %s (%s)", loaded.display_name, loaded.device, loaded.dtype)
        try:
            while (work := self._next_batch()) is not None:
                if isinstance(work, Task):
                    self._run_task(work)
                else:
                    runner.run(work, self._key_for(work[0]))
        except Exception as exc:  # a bug in the scheduler itself: stop taking work, loudly
            logger.exception("the engine worker stopped")
            self._fail_load(f"The engine worker stopped ({describe_error(exc, 200)}).")

    @staticmethod
    def _run_task(task: Task) -> None:
        try:
            task.future.set_result(task.run())
        except Exception as exc:
            logger.exception("an engine task failed")
            task.future.set_exception(exc)

    def _fail_load(self, message: str) -> None:
        with self._cond:
            self._state = "failed"
            self._error = message
            # Queued jobs and a batch the stopped worker was running: nobody else will.
            stranded = self._queue.clear() + list(self._running)
            self._running = []
        self._ready.set()
        for job in stranded:
            self._fail(job, ProviderUnavailable(message))

    def _key_for(self, job: Job) -> BatchKey:
        if job.key is None:
            loaded = self._loaded
            assert loaded is not None
            request = job.request
            steps = request.steps if request.steps is not None else loaded.default_steps
            guidance = request.guidance if request.guidance is not None else loaded.default_guidance
            job.key = BatchKey(
                model=request.model,
                width=request.width,
                height=request.height,
                steps=int(steps),
                guidance=float(guidance),
                max_sequence_length=loaded.max_sequence_length,
                reference_digests=tuple(ref.digest for ref in request.references),
                loras=request.loras,
            )
        return job.key

    def _next_batch(self) -> list[Job] | Task | None:
        """Wait for work, give compatible requests `batch_window_ms` to arrive, take a batch;
        a task (registering an adapter) goes first, between two batches."""
        window = self.cfg.batch_window_ms / 1000.0
        limit = self.cfg.max_batch_size
        with self._cond:
            while True:
                while not self._queue and not self._tasks and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                if self._tasks and (self._tasks[0].when is None or self._tasks[0].when()):
                    return self._tasks.popleft()
                first = self._queue.first
                # Batch work waits a little longer for company (no one waits on its latency; an
                # interactive job that arrives meanwhile ends the wait, being first now).
                wait = max(window, BATCH_GATHER_S) if first.request.priority == "batch" else window
                if first.request.batching and wait > 0:
                    deadline = time.monotonic() + wait
                    while (
                        not self._stopping
                        and self._queue
                        and self._queue.first is first
                        and self._queue.compatible_images(first, self._key_for) < limit
                    ):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    if self._stopping:
                        return None
                    if not self._queue:
                        continue
                return self._take_batch()

    def _take_batch(self) -> list[Job]:
        batch = self._queue.take(self.cfg.max_batch_size, self._key_for)
        total = sum(job.images for job in batch)
        now = time.monotonic()
        for job in batch:
            self._key_for(job)
            job.state = JobState.RUNNING
            job.started_at = now
        self.jobs_started += len(batch)
        self.batch_sizes[total] += 1
        self._running = batch
        return batch

    def _hooks(self) -> Hooks[Job]:
        """What the runner may ask about and report on the jobs it runs."""
        return Hooks(
            stopping=lambda: self._stopping,
            wanted=lambda job: job.state is JobState.RUNNING,
            progress=self._emit_progress,
            batch_done=self._batch_done,
            finished=self._finished,
            failed=self._fail,
            aborted=self._batch_aborted,
        )

    def _batch_aborted(self, batch: list[Job]) -> None:
        with self._cond:
            self.batches_aborted += 1
        for job in batch:  # jobs still running here are victims of a shutdown
            self._fail(job, ProviderUnavailable(SHUT_DOWN_WHILE_RUNNING))

    def _batch_done(self, seconds: float) -> None:
        with self._cond:
            self._running = []
            self.batches_run += 1
            previous = self._batch_seconds
            self._batch_seconds = (
                seconds if previous is None else EMA_WEIGHT * seconds + (1 - EMA_WEIGHT) * previous
            )

    def _finished(self, job: Job, result: ImageResult) -> None:
        with self._cond:
            if job.state is not JobState.RUNNING:
                return
            job.state = JobState.DONE
            job.finished_at = time.monotonic()
            self.images_generated += len(result.images)
        self._resolve(job, result, None)
