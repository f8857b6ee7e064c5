"""Loading the diffusers `Flux2KleinPipeline`: real weights or demo weights, device, dtype, options.

Importing this module does not import torch: `EngineConfig` is plain data, so configuration code
and the gateway can use it without the engine extra installed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pixelrouter.config import DEFAULT_MODEL
from pixelrouter.errors import ServiceUnavailable

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEMO_DISPLAY_NAME = "Local (demo weights)"
DISPLAY_NAME = "Local"
# The pipeline's own default, kept here so it is visible: Qwen3 hidden states 9, 18 and 27.
DEFAULT_TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)

DTYPE_NAMES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class EngineConfig:
    """How the local engine loads and runs the model."""

    model: str = DEFAULT_MODEL  # a local diffusers directory or a Hugging Face hub id
    demo: bool = False  # tiny random weights built in code; no download
    demo_seed: int = 0
    device: str | None = None  # None: "cuda" when available, else "cpu"
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    max_batch_size: int = 4  # in images
    max_queue_images: int = 64  # queued images beyond this are refused, so routing moves on
    batch_window_ms: float = 3.0  # how long the worker waits for more compatible requests
    prompt_cache_size: int = 256  # prompt embeddings kept (LRU, on the CPU)
    cpu_offload: bool = False  # diffusers' enable_model_cpu_offload
    compile: bool = False  # torch.compile the transformer's repeated blocks
    attention_backend: str | None = None  # diffusers' set_attention_backend, e.g. "flash"
    local_files_only: bool = field(default_factory=_hub_offline)
    encode_workers: int = 2  # threads that turn pixels into PNG/JPEG/WebP


class EngineLoadError(ServiceUnavailable):
    """The pipeline could not be loaded; the message says how to provide weights."""

    error_type = "engine_load_error"


@dataclass
class LoadedPipeline:
    """A ready pipeline and the facts the scheduler needs about it."""

    pipe: Any  # a Flux2KleinPipeline; diffusers' lazy modules hide its methods from mypy
    device: torch.device
    dtype: torch.dtype
    is_distilled: bool
    default_steps: int
    default_guidance: float
    max_sequence_length: int
    text_encoder_out_layers: tuple[int, ...]
    demo: bool
    display_name: str


def resolve_device(name: str | None) -> torch.device:
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    import torch

    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    canonical = DTYPE_NAMES.get(name.strip().lower())
    if canonical is None:
        raise EngineLoadError(f"Unknown dtype {name!r}: use one of bfloat16, float16 or float32.")
    return getattr(torch, canonical)


def _how_to_get_weights() -> str:
    return (
        "Download the weights with `huggingface-cli download black-forest-labs/FLUX.2-klein-4B "
        "--local-dir ./models/FLUX.2-klein-4B` (or `hf download ...`), then start "
        "`pixelrouter serve --model ./models/FLUX.2-klein-4B`; or run `pixelrouter serve --demo` "
        "for tiny random weights that need no download."
    )


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One short line for an exception: 'TypeName: first line of its message'."""
    text = str(exc).strip()
    text = text.splitlines()[0] if text else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _looks_like_path(model: str) -> bool:
    """Hub ids are 'org/name'; anything else with a path shape is meant as a local directory."""
    return (
        model.startswith(("/", ".", "~"))
        or "\\" in model
        or model.count("/") != 1
        or os.path.exists(os.path.expanduser(model))
    )


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Newer diffusers take `dtype` and deprecate `torch_dtype`; older ones know only the latter."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def _from_pretrained(cfg: EngineConfig, dtype: torch.dtype) -> Any:
    from diffusers import Flux2KleinPipeline

    model = cfg.model.strip()
    local_files_only = cfg.local_files_only
    if _looks_like_path(model):
        path = os.path.expanduser(model)
        if not os.path.isdir(path):
            raise EngineLoadError(
                f"Model directory {model!r} does not exist. {_how_to_get_weights()}"
            )
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise EngineLoadError(
                f"{model!r} is not a diffusers pipeline directory (no model_index.json). "
                f"{_how_to_get_weights()}"
            )
        model, local_files_only = path, True  # a local directory never needs the hub
    try:
        pipe = Flux2KleinPipeline.from_pretrained(
            model, local_files_only=local_files_only, **_dtype_kwarg(dtype)
        )
    except Exception as exc:  # diffusers raises many types: missing, offline, corrupt files
        logger.warning("loading %s failed", model, exc_info=True)
        raise EngineLoadError(
            f"Could not load FLUX.2 [klein] weights from {cfg.model!r}: {describe_error(exc)}. "
            f"{_how_to_get_weights()}"
        ) from exc
    return pipe


def _defaults(pipe: Any) -> tuple[bool, int, float]:
    """(is_distilled, steps, guidance): distilled klein is 4 steps at 1.0, base models 50 at 4.0."""
    is_distilled = bool(getattr(pipe.config, "is_distilled", False))
    return (is_distilled, 4, 1.0) if is_distilled else (is_distilled, 50, 4.0)


def load_pipeline(cfg: EngineConfig) -> LoadedPipeline:
    """Build the demo pipeline or load real weights, then place it per the config."""
    import torch

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.demo:
        from pixelrouter.engine.demo import build_demo_pipeline

        pipe: Any = build_demo_pipeline(cfg.demo_seed)
        if dtype != torch.float32:  # built in float32; casting a no-op only adds a warning
            pipe.to(dtype=dtype)
    else:
        pipe = _from_pretrained(cfg, dtype)
    pipe.set_progress_bar_config(disable=True)
    try:
        if cfg.attention_backend:
            pipe.transformer.set_attention_backend(cfg.attention_backend)
        if cfg.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        if cfg.compile:
            pipe.transformer.compile_repeated_blocks(fullgraph=True)
    except Exception as exc:
        logger.warning("preparing the pipeline on %s failed", device, exc_info=True)
        raise EngineLoadError(
            f"Could not prepare the pipeline on {device} ({dtype}): {describe_error(exc)}."
        ) from exc
    is_distilled, steps, guidance = _defaults(pipe)
    return LoadedPipeline(
        pipe=pipe,
        device=device,
        dtype=dtype,
        is_distilled=is_distilled,
        default_steps=steps,
        default_guidance=guidance,
        max_sequence_length=int(getattr(pipe, "tokenizer_max_length", 512)),
        text_encoder_out_layers=DEFAULT_TEXT_ENCODER_OUT_LAYERS,
        demo=cfg.demo,
        display_name=DEMO_DISPLAY_NAME if cfg.demo else DISPLAY_NAME,
    )
