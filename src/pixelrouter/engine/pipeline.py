"""Loading the diffusers `Flux2KleinPipeline`: real weights or demo weights, device, dtype, options.

Importing this module does not import torch: `EngineConfig` is plain data, so configuration code
and the gateway can use it without the engine extra installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import EngineLoadError
from pixelrouter.loras import LoraRegistry

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEMO_DISPLAY_NAME = "Local (demo weights)"
RANDOM_DISPLAY_NAME = "Local (random klein 4B weights, {size})"
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


def _env_flag(name: str, default: bool) -> Callable[[], bool]:
    def read() -> bool:
        value = os.environ.get(name, "").strip().lower()
        return default if not value else value in ("1", "true", "yes", "on")

    return read


def _env_text(name: str) -> Callable[[], str | None]:
    return lambda: os.environ.get(name, "").strip() or None


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'1024x1024,512x512' (or '1024,512' for squares) → ((1024, 1024), (512, 512))."""
    sizes = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        width, _, height = part.lower().partition("x")
        try:
            sizes.append((int(width), int(height or width)))
        except ValueError:
            raise ValueError(f"bad size {part!r}: use WIDTHxHEIGHT, e.g. 1024x1024") from None
    return tuple(sizes)


def _env_sizes() -> tuple[tuple[int, int], ...] | None:
    text = os.environ.get("PIXELROUTER_WARMUP_SIZES")
    return None if text is None else parse_sizes(text)


@dataclass
class EngineConfig:
    """How the local engine loads and runs the model.

    Every speed option can also be set by its `PIXELROUTER_*` environment variable (that is how
    `pixelrouter serve` passes its flags). Measurements and the reasons for the defaults are in
    docs/performance.md, "Engine speed options".
    """

    model: str = KLEIN_4B.hf_id  # a local diffusers directory or a Hugging Face hub id
    demo: bool = False  # tiny random weights built in code; no download
    demo_seed: int = 0
    # "full" or "small": klein 4B's real configurations with random weights (random_weights.py)
    random_weights: str | None = field(default_factory=_env_text("PIXELROUTER_RANDOM_WEIGHTS"))
    device: str | None = None  # None: "cuda" when available, else "cpu"
    dtype: str | None = None  # None: bfloat16 on cuda, float32 on cpu
    max_batch_size: int = 4  # in images
    max_queue_images: int = 64  # queued images beyond this are refused, so routing moves on
    batch_window_ms: float = 3.0  # how long the worker waits for more compatible requests
    prompt_cache_size: int = 256  # prompt embeddings kept (LRU, on the CPU)
    cpu_offload: bool = False  # diffusers' enable_model_cpu_offload
    # torch.compile the transformer's repeated blocks (diffusers' compile_repeated_blocks)
    compile: bool = field(default_factory=_env_flag("PIXELROUTER_COMPILE", False))
    # diffusers' set_attention_backend, e.g. "flash", "_native_cudnn", "sage"
    attention_backend: str | None = field(
        default_factory=_env_text("PIXELROUTER_ATTENTION_BACKEND")
    )
    # one QKV matrix per double-block attention (diffusers' fuse_qkv_projections)
    fuse_qkv: bool = field(default_factory=_env_flag("PIXELROUTER_FUSE_QKV", False))
    # torchao float8 weights and activations in the transformer's linear layers (CUDA sm89+)
    fp8: bool = field(default_factory=_env_flag("PIXELROUTER_FP8", False))
    # run the text encoder only up to its last read layer and skip its LM head: exact
    trim_text_encoder: bool = field(
        default_factory=_env_flag("PIXELROUTER_TRIM_TEXT_ENCODER", True)
    )
    # VAE decode on its own thread (and CUDA stream), overlapped with the next batch
    overlap_decode: bool = field(default_factory=_env_flag("PIXELROUTER_OVERLAP_DECODE", False))
    # pad every batch to a power of two, so compiled code sees a few fixed shapes
    static_shapes: bool = field(default_factory=_env_flag("PIXELROUTER_STATIC_SHAPES", False))
    # compile with CUDA graphs (mode "reduce-overhead"); implies compile and static shapes
    cuda_graphs: bool = field(default_factory=_env_flag("PIXELROUTER_CUDA_GRAPHS", False))
    # sizes run once at start, before /ready; None: 1024x1024 when compiling, else none
    warmup_sizes: tuple[tuple[int, int], ...] | None = field(default_factory=_env_sizes)
    local_files_only: bool = field(default_factory=_hub_offline)
    encode_workers: int = 2  # threads that turn pixels into PNG/JPEG/WebP
    # the registered LoRA adapters (shared with the edges, which read the checks recorded here)
    loras: LoraRegistry = field(default_factory=LoraRegistry)
    # adapters kept loaded in the pipeline at once; the least recently used is unloaded first
    max_loaded_loras: int = 4
    # a registered adapter fused into the transformer at its default scale at start: then the
    # only adapter set served (docs/loras.md, "Fusing")
    fuse_lora: str | None = None

    def batch_buckets(self) -> tuple[int, ...]:
        """The batch sizes a static-shape engine runs: powers of two up to max_batch_size."""
        buckets, size = [], 1
        while size < self.max_batch_size:
            buckets.append(size)
            size *= 2
        return (*buckets, self.max_batch_size)

    @property
    def pads_batches(self) -> bool:
        return self.static_shapes or self.cuda_graphs

    def resolved_warmup_sizes(self) -> tuple[tuple[int, int], ...]:
        if self.warmup_sizes is not None:
            return self.warmup_sizes
        return ((1024, 1024),) if self.compile or self.cuda_graphs else ()


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


def check_options(cfg: EngineConfig, device: torch.device) -> None:
    """Refuse, with a reason, the options this device cannot run."""
    import torch

    if cfg.random_weights is not None:
        from pixelrouter.engine.random_weights import SIZES

        if cfg.random_weights not in SIZES:
            raise EngineLoadError(
                f"Unknown random-weights size {cfg.random_weights!r}: use one of "
                f"{', '.join(SIZES)}."
            )
    if cfg.fp8:
        if device.type != "cuda":
            raise EngineLoadError(
                f"fp8 needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper, "
                f"Blackwell); the engine runs on {device}. Leave fp8 off here."
            )
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise EngineLoadError(
                f"fp8 needs compute capability 8.9 or newer; {device} has {major}.{minor}."
            )
        try:
            import torchao  # noqa: F401
        except ImportError:
            raise EngineLoadError("fp8 needs torchao: pip install torchao.") from None
    if cfg.cuda_graphs and device.type != "cuda":
        raise EngineLoadError(
            f"CUDA graphs need a CUDA device; the engine runs on {device}. Leave cuda_graphs off."
        )
    if cfg.overlap_decode and cfg.cpu_offload:
        raise EngineLoadError(
            "overlap_decode cannot be combined with cpu_offload: offloading moves the VAE "
            "while the next batch runs. Turn one of them off."
        )


def trim_text_encoder(text_encoder: Any, out_layers: tuple[int, ...]) -> None:
    """Run the text encoder only as deep as the hidden states the pipeline reads, and compute
    no logits over the 151 936-token vocabulary: the embeddings stay bit-equal.

    `hidden_states[k]` is the input of layer k, so reading up to k needs layers 0..k-1; one more
    layer is kept because transformers replaces the last hidden state with the normed output.
    """
    keep = max(out_layers) + 1
    model: Any = getattr(text_encoder, "model", None)
    layers = getattr(model, "layers", None)
    if layers is not None and len(layers) > keep:
        model.layers = layers[:keep]  # frees the unused layers' memory
        text_encoder.config.num_hidden_layers = keep

    def no_logits(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs.setdefault("logits_to_keep", 1)
        return args, kwargs

    if not getattr(text_encoder, "_pixelrouter_trimmed", False):
        text_encoder.register_forward_pre_hook(no_logits, with_kwargs=True)
        text_encoder._pixelrouter_trimmed = True


def quantize_fp8(transformer: Any) -> None:
    """torchao float8 (dynamic activations, row-wise weights) for the transformer's linears."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def _build(cfg: EngineConfig, device: torch.device, dtype: torch.dtype) -> tuple[Any, str]:
    """The pipeline object and its display name."""
    import torch

    if cfg.random_weights is not None:
        from pixelrouter.engine.random_weights import build_random_pipeline

        # Built directly on the device, unless offloading keeps the models on the host.
        where = torch.device("cpu") if cfg.cpu_offload else device
        pipe = build_random_pipeline(cfg.random_weights, device=where, dtype=dtype)
        return pipe, RANDOM_DISPLAY_NAME.format(size=cfg.random_weights)
    if cfg.demo:
        from pixelrouter.engine.demo import build_demo_pipeline

        demo: Any = build_demo_pipeline(cfg.demo_seed)
        if dtype != torch.float32:  # built in float32; casting a no-op only adds a warning
            demo.to(dtype=dtype)
        return demo, DEMO_DISPLAY_NAME
    return _from_pretrained(cfg, dtype), DISPLAY_NAME


def load_pipeline(cfg: EngineConfig) -> LoadedPipeline:
    """Build the demo or random-weights pipeline or load real weights, then apply the speed
    options of the config on its device."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    check_options(cfg, device)
    pipe, display_name = _build(cfg, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    try:
        if cfg.attention_backend:
            pipe.transformer.set_attention_backend(cfg.attention_backend)
        if cfg.fuse_qkv:
            pipe.transformer.fuse_qkv_projections()
        if cfg.trim_text_encoder:
            trim_text_encoder(pipe.text_encoder, DEFAULT_TEXT_ENCODER_OUT_LAYERS)
        if cfg.cpu_offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        if cfg.fp8:
            quantize_fp8(pipe.transformer)
        if cfg.compile or cfg.cuda_graphs:
            mode = "reduce-overhead" if cfg.cuda_graphs else None
            pipe.transformer.compile_repeated_blocks(
                fullgraph=True, mode=mode, dynamic=False if cfg.pads_batches else None
            )
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
        demo=cfg.demo or cfg.random_weights is not None,
        display_name=display_name,
    )
