"""From a batch of jobs to encoded images, in the order a diffusers pipeline reads.

0. Adapters: the batch's LoRA set made the pipeline's active one (diffusers' `set_adapters`,
   loading an adapter that is not loaded), before the call and never during it.
1. Prompt embeddings: each prompt through the pipeline's own `encode_prompt`, alone, cached by
   prompt text (`PromptCache`).
2. Denoising: one pipeline call up to the latents with one CPU generator per image (image i of a
   request with seed s uses `manual_seed(s + i)`, SPEC §2); progress and cancellation are
   checked between steps.
3. Decoding: the VAE, one image at a time, on the worker thread or, with `overlap_decode`, on a
   decode thread while the worker denoises the next batch.
4. Encoding: PNG/JPEG/WebP on a small thread pool, so the next batch starts at once.

The runner keeps no job state: it asks about and reports on jobs through the `Hooks` the
scheduler gives it when the pipeline is loaded. Warm-up runs the same pipeline before the engine
reports ready.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from pixelrouter.engine.adapters import Adapters
from pixelrouter.engine.pipeline import EngineConfig, LoadedPipeline, describe_error
from pixelrouter.errors import ProviderError, ProviderUnavailable
from pixelrouter.imagecodec import encode_image
from pixelrouter.types import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    LoraChoice,
    ReferenceImage,
)

logger = logging.getLogger(__name__)

SHUT_DOWN_WHILE_RUNNING = "The local engine shut down while this ran."


class Work(Protocol):
    """What the runner reads of a job: its request."""

    @property
    def request(self) -> ImageRequest: ...


class BatchSettings(Protocol):
    """What every image of one pipeline call shares (the scheduler's `BatchKey`)."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def steps(self) -> int: ...
    @property
    def guidance(self) -> float: ...
    @property
    def max_sequence_length(self) -> int: ...
    @property
    def loras(self) -> tuple[LoraChoice, ...]: ...


W = TypeVar("W", bound=Work)


@dataclass(frozen=True)
class Hooks(Generic[W]):
    """How the runner asks about and reports on the jobs of a batch; the scheduler answers."""

    stopping: Callable[[], bool]  # the engine shuts down: abort between denoising steps
    wanted: Callable[[W], bool]  # False once the job was cancelled or ended otherwise
    progress: Callable[[W, int], None]  # denoising steps this job has done so far
    batch_done: Callable[[float], None]  # the worker is free again, after these seconds
    finished: Callable[[W, ImageResult], None]  # the job's images, encoded
    failed: Callable[[W, Exception], None]
    aborted: Callable[[list[W]], None]  # every job went away, or a shutdown outwaited the batch


class _BatchAborted(Exception):
    """Raised from the step callback: every job of the batch is gone, or the engine stops."""


@dataclass
class _Denoised(Generic[W]):
    """One pipeline call's latents and, per row, the job it belongs to."""

    latents: torch.Tensor
    owners: list[W]


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

    def stats(self) -> dict[str, int]:
        return {"size": len(self._entries), "hits": self.hits, "misses": self.misses}


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


class Runner(Generic[W]):
    """Runs batches on the loaded pipeline. `run` is called on the scheduler's worker thread."""

    def __init__(self, loaded: LoadedPipeline, cfg: EngineConfig, hooks: Hooks[W]) -> None:
        self.loaded = loaded
        self.cfg = cfg
        self.hooks = hooks
        self.prompt_cache = PromptCache(cfg.prompt_cache_size)
        self.adapters = Adapters(loaded.pipe, cfg.max_loaded_loras)
        self._count_tokens = _token_counter(loaded.pipe.tokenizer)
        self._token_lock = threading.Lock()
        self._encoder = ThreadPoolExecutor(
            max_workers=max(1, cfg.encode_workers), thread_name_prefix="pixelrouter-encode"
        )
        self._decoder = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelrouter-decode")
            if cfg.overlap_decode
            else None
        )
        self._decode_stream: Any = None  # a CUDA stream of the decode thread, made on first use

    def count_prompt_tokens(self, prompt: str) -> int:
        """Tokens of the prompt text (no chat template) by the pipeline's tokenizer."""
        with self._token_lock:
            return self._count_tokens(prompt)

    def close(self) -> None:
        """Finish the images in flight: decoding first, as it hands images to the encoders."""
        if self._decoder is not None:
            self._decoder.shutdown(wait=True)
        self._encoder.shutdown(wait=True)

    # ------------------------------------------------------------------ a batch, top to bottom

    def run(self, batch: list[W], settings: BatchSettings) -> None:
        """Steps 0-2 on this thread, then 3-4 here or (overlap_decode) on the decode thread;
        every outcome goes to the hooks."""
        started = time.monotonic()
        try:
            self.adapters.activate(settings.loras)
            denoised = self._denoise(batch, settings)
        except _BatchAborted:
            self.hooks.aborted(batch)
            self.hooks.batch_done(time.monotonic() - started)
            return
        except Exception as exc:
            self._batch_failed(batch, exc)
            self.hooks.batch_done(time.monotonic() - started)
            return
        if self._decoder is None:
            self._finish(batch, denoised, started)
            self.hooks.batch_done(time.monotonic() - started)
            return
        # The worker takes the next batch while this one is decoded (and, on CUDA, decoded on
        # its own stream, after the denoising kernels recorded in `ready`).
        ready = None
        if denoised[0].latents.is_cuda:
            ready = torch.cuda.Event()
            ready.record()
        self.hooks.batch_done(time.monotonic() - started)
        try:
            self._decoder.submit(self._finish, batch, denoised, started, ready)
        except RuntimeError:  # the decoder was shut down: a shutdown outwaited this batch
            self.hooks.aborted(batch)

    # 0. The batch's LoRA adapters: `Adapters.activate`, between batches (adapters.py)

    # 1. Prompt embeddings

    def _encode_prompt(self, prompt: str) -> torch.Tensor:
        """The pipeline's own `encode_prompt` for one prompt, on the CPU."""
        loaded = self.loaded
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
        cached = self.prompt_cache.get(prompt)
        if cached is not None:
            return cached
        embeds = self._encode_prompt(prompt)
        self.prompt_cache.put(prompt, embeds)
        return embeds

    # 2. Denoising

    def _denoise(self, batch: list[W], settings: BatchSettings) -> list[_Denoised[W]]:
        """The batch's denoised latents: one pipeline call, or one per image for a job that asked
        to run alone (each then equal to a plain diffusers call)."""
        entries = [(job, i) for job in batch for i in range(job.request.n)]
        if batch[0].request.batching:
            return [self._call_pipeline(entries, settings, step_offset=0)]
        steps = settings.steps
        return [
            self._call_pipeline([entry], settings, i * steps) for i, entry in enumerate(entries)
        ]

    def _bucket(self, images: int) -> int:
        """The batch size a batch of `images` runs at: itself, or with static shapes the next
        bucket (the padding rows are computed and thrown away)."""
        if not self.cfg.pads_batches:
            return images
        return next((b for b in self.cfg.batch_buckets() if b >= images), images)

    def _call_pipeline(
        self, entries: list[tuple[W, int]], settings: BatchSettings, step_offset: int
    ) -> _Denoised[W]:
        """One pipeline call up to the latents; `entries` are (job, image index) in batch
        order."""
        loaded = self.loaded
        pipe = loaded.pipe
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
        if settings.guidance > 1.0 and not loaded.is_distilled:
            # The pipeline would encode "" once (batch 1); a batch needs one row per image.
            negative = self._prompt_embeds("")
            extra["negative_prompt_embeds"] = negative.repeat(len(rows), 1, 1).to(device)
        references = entries[0][0].request.references  # equal across the batch: in the key
        if references:
            extra["image"] = [_reference_pil(ref) for ref in references]
        hooks = self.hooks

        def on_step_end(_pipe: Any, step: int, _timestep: Any, _tensors: dict) -> dict:
            if hooks.stopping() or not any(hooks.wanted(job) for job in jobs):
                raise _BatchAborted
            for job in jobs:
                hooks.progress(job, step_offset + step + 1)
            return {}

        latents = pipe(
            prompt_embeds=prompt_embeds.to(device),
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=generators,
            output_type="latent",
            callback_on_step_end=on_step_end,
            max_sequence_length=settings.max_sequence_length,
            text_encoder_out_layers=loaded.text_encoder_out_layers,
            **extra,
        ).images
        return _Denoised(latents[: len(entries)], [job for job, _ in entries])

    # 3. Decoding, and the handoff to the encoders

    def _finish(
        self,
        batch: list[W],
        denoised: list[_Denoised[W]],
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
            self.hooks.aborted(batch)
            return
        owners = [owner for part in denoised for owner in part.owners]
        per_job: dict[W, list[np.ndarray | None]] = {job: [] for job in batch}
        for owner, px in zip(owners, pixels, strict=True):
            per_job[owner].append(px)
        for job in batch:
            images = per_job[job]
            if any(px is None for px in images):  # cancelled while it ran
                continue
            try:
                self._encoder.submit(self._encode, job, np.stack(images), started)  # type: ignore[arg-type]
            except RuntimeError:  # the encoders were shut down: a shutdown outwaited this batch
                self.hooks.failed(job, ProviderUnavailable(SHUT_DOWN_WHILE_RUNNING))

    def _decode(
        self, latents: torch.Tensor, owners: list[W], ready: Any = None
    ) -> list[np.ndarray | None]:
        """The pipeline's own last steps (VAE decode, postprocess), one image at a time.

        Measured with the demo weights on an H100 in bf16: the denoised latents came out
        bit-equal batched or alone, but the VAE's convolutions pick other kernels for other batch
        sizes, so images decoded together drifted up to 16/255 from their lone selves (7% of
        values). Decoded one by one they are equal; on CPU float32 batching then changes only a
        few values by 1/255. It also skips the images of jobs cancelled meanwhile. `ready` is
        the CUDA event after the denoising when this runs on the decode thread.
        """
        pipe = self.loaded.pipe
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
                if not self.hooks.wanted(owner):
                    pixels.append(None)
                    continue
                image = pipe.vae.decode(
                    latents[index : index + 1].to(vae_device), return_dict=False
                )
                pixels.append(pipe.image_processor.postprocess(image[0], output_type="np")[0])
        if self._decoder is None:
            pipe.maybe_free_model_hooks()
        return pixels

    # 4. Encoding, on an encoder thread

    def _encode(self, job: W, images: np.ndarray, started: float) -> None:
        if not self.hooks.wanted(job):
            return
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
            error = ProviderError(f"Encoding the image failed ({describe_error(exc, 200)}).")
            self.hooks.failed(job, error)
            return
        tokens = self.count_prompt_tokens(request.prompt)
        result = ImageResult(
            request_id=request.id,
            model=request.model,
            images=tuple(generated),
            generation_time_ms=int((time.monotonic() - started) * 1000),
            prompt_tokens=tokens,
            demo=self.loaded.demo,
        )
        self.hooks.finished(job, result)

    def _batch_failed(self, batch: list[W], exc: Exception) -> None:
        logger.error(
            "batch of %d request(s) failed: %s",
            len(batch),
            ", ".join(job.request.id for job in batch),
            exc_info=exc,
        )
        for job in batch:
            error = ProviderError(f"The local engine failed ({describe_error(exc, 200)}).")
            self.hooks.failed(job, error)

    # ------------------------------------------------------------------ before serving

    def warm_up(self) -> float | None:
        """One run per configured size (and per batch bucket when shapes are static) before the
        engine reports ready, so the first requests do not pay for compilation or autotuning.
        Returns the seconds it took, or None when no size is configured."""
        sizes = self.cfg.resolved_warmup_sizes()
        if not sizes:
            return None
        loaded = self.loaded
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
        seconds = time.monotonic() - started
        logger.info(
            "warm-up of %s at batch sizes %s took %.1f s",
            ", ".join(f"{w}x{h}" for w, h in sizes),
            batches,
            seconds,
        )
        return seconds
