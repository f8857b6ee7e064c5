"""The engine: a queue of jobs, batching by `BatchKey`, one worker thread that owns the pipeline.

A request becomes a `Job` (queued → running → done | cancelled | failed). The worker takes the
oldest job and every queued job that shares its `BatchKey`, up to `max_batch_size` images, runs
them as one pipeline call with one CPU generator per image (image i of a request with seed s uses
`manual_seed(s + i)`, SPEC §2), and hands the pixels to a small thread pool that encodes them, so
the next batch starts at once. Prompt embeddings are cached by prompt text.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from pixelrouter.catalog import estimate_prompt_tokens
from pixelrouter.engine.pipeline import EngineConfig, LoadedPipeline, describe_error, load_pipeline
from pixelrouter.errors import EngineLoadError, ProviderError, ProviderUnavailable
from pixelrouter.imagecodec import encode_image
from pixelrouter.types import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProgressCallback,
    ProgressEvent,
    ReferenceImage,
)

logger = logging.getLogger(__name__)

RECENT_JOBS = 1024  # finished jobs kept for `job()` look-ups
EMA_WEIGHT = 0.3  # weight of the newest batch duration in the wait estimate


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


@dataclass
class _Denoised:
    """One pipeline call's latents and, per row, the job it belongs to."""

    latents: torch.Tensor
    owners: list[Job]


class _BatchAborted(Exception):
    """Raised from the step callback: every job of the batch is gone, or the engine stops."""


class PromptCache:
    """LRU of prompt embeddings by prompt text, kept on the CPU to spare accelerator memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, prompt: str) -> torch.Tensor | None:
        embeds = self._entries.get(prompt)
        if embeds is None:
            self.misses += 1
            return None
        self._entries.move_to_end(prompt)
        self.hits += 1
        return embeds

    def put(self, prompt: str, embeds: torch.Tensor) -> None:
        if self.capacity == 0:
            return
        self._entries[prompt] = embeds
        self._entries.move_to_end(prompt)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Count prompt tokens on a private copy of the tokenizer: the pipeline switches padding and
    truncation on the shared one while it runs, on another thread."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        private = Tokenizer.from_str(backend.to_str())
        private.no_padding()
        private.no_truncation()
        return lambda text: len(private.encode(text, add_special_tokens=False).ids)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _execution_device(module: torch.nn.Module) -> torch.device:
    """Where a module's inputs must go (the onload device under CPU offload), as diffusers does."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # older diffusers: no offload-aware helper
        return next(module.parameters()).device
    return get_module_execution_device(module)


def _reference_pil(reference: ReferenceImage) -> Image.Image:
    return Image.frombytes("RGB", (reference.width, reference.height), reference.rgb)


class Engine:
    """Runs image requests on the local pipeline; `generate` is awaited on the event loop."""

    def __init__(self, cfg: EngineConfig | None = None) -> None:
        self.cfg = cfg or EngineConfig()
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._state = "not_started"  # → loading → ready | failed; stopped after shutdown
        self._error: str | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._loaded: LoadedPipeline | None = None
        self._count_tokens: Callable[[str], int] | None = None
        self._token_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._encoder = ThreadPoolExecutor(
            max_workers=max(1, self.cfg.encode_workers), thread_name_prefix="pixelrouter-encode"
        )
        # VAE decode overlapped with the next batch's denoising (cfg.overlap_decode)
        self._decoder = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelrouter-decode")
            if self.cfg.overlap_decode
            else None
        )
        self._decode_stream: Any = None  # a CUDA stream of the decode thread, made on first use
        self._prompt_cache = PromptCache(self.cfg.prompt_cache_size)
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
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in queued:
            self._fail(job, ProviderUnavailable("The local engine shut down before this ran."))
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        if self._decoder is not None:  # before the encoders: decoding hands images to them
            self._decoder.shutdown(wait=True)
        self._encoder.shutdown(wait=True)
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
        with self._cond:
            queued_images = sum(job.images for job in self._queue)
            running_images = sum(job.images for job in self._running)
            batches_ahead = math.ceil(queued_images / max(1, self.cfg.max_batch_size))
            batches_ahead += 1 if self._running else 0
            return {
                "state": self._state,
                "queue_depth": len(self._queue),
                "queued_images": queued_images,
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
                "prompt_cache": {
                    "size": len(self._prompt_cache),
                    "hits": self._prompt_cache.hits,
                    "misses": self._prompt_cache.misses,
                },
                "demo": self.cfg.demo,
                "error": self._error,
            }

    def count_prompt_tokens(self, prompt: str) -> int | None:
        """Tokens of the prompt text (no chat template) by the loaded tokenizer; None before."""
        count = self._count_tokens
        if count is None:
            return None
        with self._token_lock:
            return count(prompt)

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
        for more images than one batch holds runs as several jobs (`_generate_in_parts`)."""
        if request.n > self.cfg.max_batch_size:
            return await self._generate_in_parts(request, on_progress)
        return await self._generate_job(request, on_progress)

    async def _generate_in_parts(
        self, request: ImageRequest, on_progress: ProgressCallback | None
    ) -> ImageResult:
        """`n` images as jobs of at most `max_batch_size`: part k starts at image `offset`, so
        its seed is `seed + offset` and image i of the request still uses `seed + i`. The
        images that were made are delivered (and charged) even when a part fails; only when
        every part fails does the request fail."""
        limit = self.cfg.max_batch_size
        offsets = list(range(0, request.n, limit))
        parts = [
            dataclasses.replace(
                request,
                id=f"{request.id}.{k}",
                n=min(limit, request.n - offset),
                seed=request.seed + offset,
            )
            for k, offset in enumerate(offsets)
        ]
        steps_done: dict[str, int] = {}
        sizes = {part.id: part.n for part in parts}

        def progress(event: ProgressEvent) -> None:
            # Progress is summed over the parts. A part's total is its steps once per batch,
            # or once per image when it runs alone (`Job.total_steps`).
            steps_done[event.request_id] = event.step
            if on_progress is not None:
                if request.batching:
                    total = event.total_steps * len(parts)
                else:
                    total = event.total_steps // sizes[event.request_id] * request.n
                on_progress(ProgressEvent(request.id, sum(steps_done.values()), total))

        outcomes = await asyncio.gather(
            *(self._generate_job(part, progress) for part in parts), return_exceptions=True
        )
        images: list[GeneratedImage] = []
        results = [o for o in outcomes if isinstance(o, ImageResult)]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if not results:
            raise errors[0]
        failed = 0
        for offset, part, outcome in zip(offsets, parts, outcomes, strict=True):
            if not isinstance(outcome, ImageResult):
                failed += part.n
                continue
            for image in outcome.images:
                image.index += offset
                images.append(image)
            failed += outcome.failed_images
        if errors:
            logger.warning(
                "%s: %d of %d parts failed (%s); delivering the %d images made",
                request.id,
                len(errors),
                len(parts),
                describe_error(errors[0], 200),
                len(images),
            )
        first = results[0]
        return dataclasses.replace(
            first,
            request_id=request.id,
            images=tuple(images),
            generation_time_ms=sum(r.generation_time_ms for r in results),
            failed_images=failed,
        )

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
            queued = sum(queued_job.images for queued_job in self._queue)
            limit = self.cfg.max_queue_images
            if queued and queued + request.n > limit:
                # 429, not 503: a busy engine is up, so this must not open its circuit.
                raise ProviderUnavailable(
                    f"The local engine's queue is full ({queued} images queued, at most "
                    f"{limit}); try again in a few seconds.",
                    status=429,
                )
            self._queue.append(job)
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

    def _cancel(self, job: Job) -> None:
        with self._cond:
            if job.state is JobState.QUEUED:
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
            elif job.state is not JobState.RUNNING:
                return
            job.state = JobState.CANCELLED
            job.finished_at = time.monotonic()
            self.jobs_cancelled += 1
            self._cond.notify_all()

    def _settle(self, job: Job, result: ImageResult | None, error: Exception | None) -> None:
        def settle() -> None:
            future = job.future
            if future is None or future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        # A closed loop (RuntimeError) means nobody waits for this job any more.
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(settle)

    def _emit_progress(self, job: Job, event: ProgressEvent) -> None:
        callback = job.on_progress
        if callback is None or job.state is not JobState.RUNNING:
            return

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
        self._settle(job, None, error)

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
        self._count_tokens = _token_counter(loaded.pipe.tokenizer)
        try:
            self._warm_up()
        except Exception as exc:
            logger.exception("warming up the pipeline failed")
            self._fail_load(f"Warming up the pipeline failed ({describe_error(exc, 200)}).")
            return
        with self._cond:
            if self._state == "loading":
                self._state = "ready"
        self._ready.set()
        logger.info("engine ready: %s on %s (%s)", loaded.display_name, loaded.device, loaded.dtype)
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(batch)
        except Exception as exc:  # a bug in the scheduler itself: stop taking work, loudly
            logger.exception("the engine worker stopped")
            self._fail_load(f"The engine worker stopped ({describe_error(exc, 200)}).")

    def _warm_up(self) -> None:
        """One run per configured size (and per batch bucket when shapes are static) before the
        engine reports ready, so the first requests do not pay for compilation or autotuning."""
        sizes = self.cfg.resolved_warmup_sizes()
        if not sizes:
            return
        loaded = self._loaded
        assert loaded is not None
        if self.cfg.pads_batches:
            batches: tuple[int, ...] = self.cfg.batch_buckets()
        elif self.cfg.compile:
            batches = tuple(dict.fromkeys((1, self.cfg.max_batch_size)))
        else:
            batches = (1,)
        started = time.monotonic()
        embeds = self._encode_prompt("warm-up")
        for width, height in sizes:
            for images in batches:
                latents = loaded.pipe(
                    prompt_embeds=embeds.repeat(images, 1, 1).to(loaded.pipe._execution_device),
                    height=height,
                    width=width,
                    num_inference_steps=loaded.default_steps,
                    guidance_scale=loaded.default_guidance,
                    generator=[torch.Generator("cpu").manual_seed(i) for i in range(images)],
                    output_type="latent",
                    max_sequence_length=loaded.max_sequence_length,
                    text_encoder_out_layers=loaded.text_encoder_out_layers,
                ).images
            with torch.no_grad():
                loaded.pipe.vae.decode(
                    latents[:1].to(_execution_device(loaded.pipe.vae)), return_dict=False
                )
            loaded.pipe.maybe_free_model_hooks()
        self.warmup_seconds = time.monotonic() - started
        logger.info(
            "warm-up of %s at batch sizes %s took %.1f s",
            ", ".join(f"{w}x{h}" for w, h in sizes),
            batches,
            self.warmup_seconds,
        )

    def _fail_load(self, message: str) -> None:
        with self._cond:
            self._state = "failed"
            self._error = message
            # Queued jobs and a batch the stopped worker was running: nobody else will.
            stranded = list(self._queue) + list(self._running)
            self._queue.clear()
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
            )
        return job.key

    def _compatible_images(self, first: Job) -> int:
        key = self._key_for(first)
        return sum(
            job.images
            for job in self._queue
            if job is first or (job.request.batching and self._key_for(job) == key)
        )

    def _next_batch(self) -> list[Job] | None:
        """Wait for work, give compatible requests `batch_window_ms` to arrive, take a batch."""
        window = self.cfg.batch_window_ms / 1000.0
        limit = self.cfg.max_batch_size
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return None
                first = self._queue[0]
                if first.request.batching and window > 0:
                    deadline = time.monotonic() + window
                    while (
                        not self._stopping
                        and self._queue
                        and self._queue[0] is first
                        and self._compatible_images(first) < limit
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
        first = self._queue.popleft()
        batch, total = [first], first.images
        if first.request.batching:
            key = self._key_for(first)
            for job in list(self._queue):
                if total >= self.cfg.max_batch_size:
                    break
                if (
                    job.request.batching
                    and self._key_for(job) == key
                    and total + job.images <= self.cfg.max_batch_size
                ):
                    self._queue.remove(job)
                    batch.append(job)
                    total += job.images
        now = time.monotonic()
        for job in batch:
            self._key_for(job)
            job.state = JobState.RUNNING
            job.started_at = now
        self.jobs_started += len(batch)
        self.batch_sizes[total] += 1
        self._running = batch
        return batch

    def _run_batch(self, batch: list[Job]) -> None:
        started = time.monotonic()
        try:
            denoised = self._denoise(batch)
        except _BatchAborted:
            self._batch_aborted(batch)
            self._batch_done(started)
            return
        except Exception as exc:
            self._batch_failed(batch, exc)
            self._batch_done(started)
            return
        if self._decoder is None:
            self._finish(batch, denoised, started)
            self._batch_done(started)
            return
        # The worker takes the next batch while this one is decoded (and, on CUDA, decoded on
        # its own stream, after the denoising kernels recorded in `ready`).
        ready = None
        if denoised[0].latents.is_cuda:
            ready = torch.cuda.Event()
            ready.record()
        self._batch_done(started)
        try:
            self._decoder.submit(self._finish, batch, denoised, started, ready)
        except RuntimeError:  # the decoder was shut down: a shutdown outwaited this batch
            self._batch_aborted(batch)

    def _batch_aborted(self, batch: list[Job]) -> None:
        with self._cond:
            self.batches_aborted += 1
        for job in batch:  # jobs still running here are victims of a shutdown
            self._fail(job, ProviderUnavailable("The local engine shut down while this ran."))

    def _batch_failed(self, batch: list[Job], exc: Exception) -> None:
        logger.error(
            "batch of %d request(s) failed: %s",
            len(batch),
            ", ".join(job.request.id for job in batch),
            exc_info=exc,
        )
        for job in batch:
            self._fail(job, ProviderError(f"The local engine failed ({describe_error(exc, 200)})."))

    def _finish(
        self,
        batch: list[Job],
        denoised: list[_Denoised],
        started: float,
        ready: Any = None,
    ) -> None:
        """Decode the denoised latents and hand each job's pixels to the encoders."""
        try:
            pixels = [
                px for part in denoised for px in self._decode(part.latents, part.owners, ready)
            ]
        except Exception as exc:
            self._batch_failed(batch, exc)
            return
        if all(px is None for px in pixels):  # every job went away meanwhile
            self._batch_aborted(batch)
            return
        owners = [owner for part in denoised for owner in part.owners]
        per_job: dict[Job, list[np.ndarray | None]] = {job: [] for job in batch}
        for owner, px in zip(owners, pixels, strict=True):
            per_job[owner].append(px)
        for job in batch:
            images = per_job[job]
            if any(px is None for px in images):  # cancelled while it ran
                continue
            try:
                self._encoder.submit(self._deliver, job, np.stack(images), started)  # type: ignore[arg-type]
            except RuntimeError:  # the encoders were shut down: a shutdown outwaited this batch
                self._fail(job, ProviderUnavailable("The local engine shut down while this ran."))

    def _batch_done(self, started: float) -> None:
        seconds = time.monotonic() - started
        with self._cond:
            self._running = []
            self.batches_run += 1
            previous = self._batch_seconds
            self._batch_seconds = (
                seconds if previous is None else EMA_WEIGHT * seconds + (1 - EMA_WEIGHT) * previous
            )

    def _denoise(self, batch: list[Job]) -> list[_Denoised]:
        """The batch's denoised latents: one pipeline call, or one per image for a job that asked
        to run alone (each then equal to a plain diffusers call)."""
        first = batch[0]
        entries = [(job, i) for job in batch for i in range(job.images)]
        if first.request.batching:
            return [self._call_pipeline(entries, step_offset=0)]
        steps = self._key_for(first).steps
        return [self._call_pipeline([entry], i * steps) for i, entry in enumerate(entries)]

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """The pipeline's own `encode_prompt` for one prompt, on the CPU."""
        loaded = self._loaded
        assert loaded is not None
        pipe = loaded.pipe
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(
                prompt=prompt,
                device=pipe._execution_device,
                num_images_per_prompt=1,
                max_sequence_length=loaded.max_sequence_length,
                text_encoder_out_layers=loaded.text_encoder_out_layers,
            )
        return embeds.to("cpu")

    def _prompt_embeds(self, prompt: str) -> torch.Tensor:
        """`_encode_prompt`, cached. Encoding each prompt alone keeps a batched request's
        embeddings bit-equal to those of a plain pipeline call."""
        cached = self._prompt_cache.get(prompt)
        if cached is not None:
            return cached
        embeds = self._encode_prompt(prompt)
        self._prompt_cache.put(prompt, embeds)
        return embeds

    def _bucket(self, images: int) -> int:
        """The batch size a batch of `images` runs at: itself, or with static shapes the next
        bucket (the padding rows are computed and thrown away)."""
        if not self.cfg.pads_batches:
            return images
        return next((b for b in self.cfg.batch_buckets() if b >= images), images)

    def _call_pipeline(self, entries: list[tuple[Job, int]], step_offset: int) -> _Denoised:
        """One pipeline call up to the latents; `entries` are (job, image index) in batch
        order."""
        loaded = self._loaded
        assert loaded is not None
        pipe = loaded.pipe
        key = self._key_for(entries[0][0])
        jobs = list(dict.fromkeys(job for job, _ in entries))
        device = pipe._execution_device
        rows = [self._prompt_embeds(job.request.prompt) for job, _ in entries]
        generators = [
            torch.Generator("cpu").manual_seed(job.request.seed + index) for job, index in entries
        ]
        padding = self._bucket(len(entries)) - len(entries)
        rows += rows[-1:] * padding
        generators += [torch.Generator("cpu").manual_seed(0) for _ in range(padding)]
        prompt_embeds = torch.cat(rows)
        extra: dict[str, Any] = {}
        if key.guidance > 1.0 and not loaded.is_distilled:
            # The pipeline would encode "" once (batch 1); a batch needs one row per image.
            negative = self._prompt_embeds("")
            extra["negative_prompt_embeds"] = negative.repeat(len(rows), 1, 1).to(device)
        references = entries[0][0].request.references  # equal across the batch: in the key
        if references:
            extra["image"] = [_reference_pil(ref) for ref in references]

        def on_step_end(_pipe: Any, step: int, _timestep: Any, _tensors: dict) -> dict:
            if self._stopping or all(job.state is JobState.CANCELLED for job in jobs):
                raise _BatchAborted
            for job in jobs:
                event = ProgressEvent(job.request.id, step_offset + step + 1, job.total_steps)
                self._emit_progress(job, event)
            return {}

        latents = pipe(
            prompt_embeds=prompt_embeds.to(device),
            height=key.height,
            width=key.width,
            num_inference_steps=key.steps,
            guidance_scale=key.guidance,
            generator=generators,
            output_type="latent",
            callback_on_step_end=on_step_end,
            max_sequence_length=key.max_sequence_length,
            text_encoder_out_layers=loaded.text_encoder_out_layers,
            **extra,
        ).images
        return _Denoised(latents[: len(entries)], [job for job, _ in entries])

    def _decode(
        self, latents: torch.Tensor, owners: list[Job], ready: Any = None
    ) -> list[np.ndarray | None]:
        """The pipeline's own last steps (VAE decode, postprocess), one image at a time.

        Measured with the demo weights on an H100 in bf16: the denoised latents came out
        bit-equal batched or alone, but the VAE's convolutions pick other kernels for other batch
        sizes, so images decoded together drifted up to 16/255 from their lone selves (7% of
        values). Decoded one by one they are equal; on CPU float32 batching then changes only a
        few values by 1/255. It also skips the images of jobs cancelled meanwhile. `ready` is
        the CUDA event after the denoising when this runs on the decode thread.
        """
        pipe = self._loaded.pipe  # type: ignore[union-attr]
        vae_device = _execution_device(pipe.vae)
        stream: Any = contextlib.nullcontext()
        if ready is not None:
            if self._decode_stream is None:
                self._decode_stream = torch.cuda.Stream(latents.device)
            self._decode_stream.wait_event(ready)
            latents.record_stream(self._decode_stream)  # the allocator must not reuse it early
            stream = torch.cuda.stream(self._decode_stream)
        pixels: list[np.ndarray | None] = []
        with torch.no_grad(), stream:
            for index, owner in enumerate(owners):
                if owner.state is JobState.CANCELLED:
                    pixels.append(None)
                    continue
                image = pipe.vae.decode(
                    latents[index : index + 1].to(vae_device), return_dict=False
                )
                pixels.append(pipe.image_processor.postprocess(image[0], output_type="np")[0])
        if self._decoder is None:
            pipe.maybe_free_model_hooks()
        return pixels

    # ------------------------------------------------------------------ the encoder threads

    def _deliver(self, job: Job, images: np.ndarray, started: float) -> None:
        if job.state is not JobState.RUNNING:
            return
        loaded = self._loaded
        assert loaded is not None
        request = job.request
        try:
            # diffusers' own float → uint8 rounding, so a lone request equals a plain call.
            pictures = VaeImageProcessor.numpy_to_pil(images)
            generated = [
                GeneratedImage(
                    data=encode_image(picture, request.output_format, request.output_compression),
                    media_type=request.media_type,
                    width=picture.width,
                    height=picture.height,
                    seed=request.seed + index,
                    index=index,
                )
                for index, picture in enumerate(pictures)
            ]
        except Exception as exc:
            logger.exception("encoding the images of %s failed", request.id)
            self._fail(
                job, ProviderError(f"Encoding the image failed ({describe_error(exc, 200)}).")
            )
            return
        tokens = self.count_prompt_tokens(request.prompt)
        result = ImageResult(
            request_id=request.id,
            model=request.model,
            images=tuple(generated),
            generation_time_ms=int((time.monotonic() - started) * 1000),
            prompt_tokens=tokens if tokens is not None else estimate_prompt_tokens(request.prompt),
            demo=loaded.demo,
        )
        with self._cond:
            if job.state is not JobState.RUNNING:
                return
            job.state = JobState.DONE
            job.finished_at = time.monotonic()
            self.images_generated += len(generated)
        self._settle(job, result, None)
