"""FLUX.2 [klein] 4B with random weights: the real configurations, so speed is measured without a
download.

`full` is the real model's arithmetic: the transformer of `black-forest-labs/FLUX.2-klein-4B`
(`transformer/config.json`: 5 double and 20 single blocks, 24 heads of 128, `in_channels=128`,
`joint_attention_dim=7680`, RoPE axes (32, 32, 32, 32) at theta 2000, `mlp_ratio=3.0`), a Qwen3-4B
text encoder (2560 wide, 36 layers, 32 query and 8 key/value heads of 128, MLP 9728, vocabulary
151 936) read at hidden states 9, 18 and 27, and the FLUX.2 VAE (`AutoencoderKLFlux2` with its
defaults: blocks 128/256/512/512, 2 layers each, 32 latent channels, mid-block attention).

`small` keeps every structural rule (block kinds, head size 128, 4-axis RoPE, 128 input
channels, 36 text layers read at 9/18/27, the real vocabulary, a four-block VAE with mid-block
attention) and shrinks depth and width so a CPU runs it in seconds: CI and `--demo`-class machines
exercise the same code path.

Weights are drawn with a fixed seed, normal(0, 0.02) for matrices and convolutions, zeros for
biases, ones for norm scales, so activations stay finite in bf16 and timings are not skewed by
NaNs. Models are built directly on the target device, so a GPU needs no 16 GB host copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
from transformers import Qwen3Config, Qwen3ForCausalLM  # type: ignore[attr-defined]

from pixelrouter.engine.demo import SPECIAL_TOKENS, build_demo_scheduler, build_demo_tokenizer

SIZES = ("full", "small")
TEXT_ENCODER_OUT_LAYERS = (9, 18, 27)
INIT_STD = 0.02

# transformer/config.json of FLUX.2-klein-4B (the diffusers bookkeeping keys left out).
KLEIN_4B_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "out_channels": None,
    "num_layers": 5,
    "num_single_layers": 20,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 7680,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": False,
}

# Qwen3-4B, as the klein text encoder (Qwen3ForCausalLM). The rotary base and context length do
# not change the arithmetic of a 512-token prompt.
QWEN3_4B_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "attention_bias": False,
    "tie_word_embeddings": True,
}

# vae/config.json of FLUX.2 (shared by every FLUX.2 model): diffusers' AutoencoderKLFlux2 defaults.
FLUX2_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 32,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "patch_size": (2, 2),
}

# The same structure, shallow and narrow: one double and two single blocks of 2 heads, a text
# encoder of width 64 that still has 36 layers, a VAE of 8/16/32/32 channels.
SMALL_TRANSFORMER = {
    **KLEIN_4B_TRANSFORMER,
    "num_layers": 1,
    "num_single_layers": 2,
    "num_attention_heads": 2,
    "joint_attention_dim": 3 * 64,
}
SMALL_TEXT_ENCODER = {
    **QWEN3_4B_TEXT_ENCODER,
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
SMALL_VAE = {**FLUX2_VAE, "block_out_channels": (8, 16, 32, 32), "norm_num_groups": 8}

CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "full": (KLEIN_4B_TRANSFORMER, QWEN3_4B_TEXT_ENCODER, FLUX2_VAE),
    "small": (SMALL_TRANSFORMER, SMALL_TEXT_ENCODER, SMALL_VAE),
}


def check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"unknown random-weights size {size!r}: use one of {', '.join(SIZES)}")
    return size


def text_encoder_config(size: str) -> Qwen3Config:
    values = CONFIGS[check_size(size)][1]
    # The byte-level tokenizer's pad token; its ids are a subset of the real vocabulary.
    pad = 256 + SPECIAL_TOKENS.index("<|endoftext|>")
    return Qwen3Config(**values, pad_token_id=pad)


def build_transformer(size: str) -> Flux2Transformer2DModel:
    return Flux2Transformer2DModel(**CONFIGS[check_size(size)][0])


def build_text_encoder(size: str) -> Qwen3ForCausalLM:
    return Qwen3ForCausalLM(text_encoder_config(size))


def build_vae(size: str) -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(**CONFIGS[check_size(size)][2])


_BUILDERS: dict[str, Callable[[str], Any]] = {
    "text_encoder": build_text_encoder,
    "transformer": build_transformer,
    "vae": build_vae,
}


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build in the serving dtype: the full size would need 16 GB in float32 first."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


_NORMS = (
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.BatchNorm2d,
    torch.nn.RMSNorm,
)


@torch.no_grad()
def init_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """normal(0, 0.02) matrices and kernels, zero biases, unit norm scales (see module doc)."""
    for sub in module.modules():
        is_norm = isinstance(sub, _NORMS) or type(sub).__name__.endswith("RMSNorm")
        for name, param in sub.named_parameters(recurse=False):
            if name == "bias":
                param.zero_()
            elif is_norm:
                param.fill_(1.0)
            else:
                noise = torch.randn(param.shape, generator=generator, device=generator.device)
                param.copy_(noise.mul_(INIT_STD))
        if isinstance(sub, torch.nn.BatchNorm2d):
            sub.reset_running_stats()


def build_random_pipeline(
    size: str = "small",
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Flux2KleinPipeline:
    """A distilled (4 steps, guidance 1.0) klein pipeline of random weights of the given size,
    built on `device` in `dtype`."""
    check_size(size)
    device = torch.device(device)
    generator = torch.Generator(device).manual_seed(seed)
    components: dict[str, Any] = {}
    for name, build in _BUILDERS.items():
        with device, _default_dtype(dtype):  # allocated where it runs, in its dtype
            model = build(size)
        init_weights(model, generator)
        components[name] = model.eval()
    pipe: Any = Flux2KleinPipeline(
        scheduler=build_demo_scheduler(),
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=build_demo_tokenizer(),
        transformer=components["transformer"],
        is_distilled=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(size: str) -> dict[str, int]:
    """Parameters per component, counted on the meta device (nothing is allocated)."""
    counts = {}
    with torch.device("meta"):
        for name, build in _BUILDERS.items():
            model = build(size)
            counts[name] = sum(int(p.numel()) for p in model.parameters())
    return counts
