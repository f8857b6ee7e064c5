"""The demo pipeline: the real `Flux2KleinPipeline` class with tiny random weights, built offline.

Every shape rule of FLUX.2 [klein] holds, so sizes, token counts and code paths are the real
ones: the VAE downsamples ×8 (four `block_out_channels`), the pipeline packs 2×2 latent patches
(1024x1024 → 64x64 = 4096 image tokens), the text encoder is a Qwen3 causal LM with 28 layers so
the pipeline's default `text_encoder_out_layers` (9, 18, 27) work, and the tokenizer is a
byte-level BPE with a Qwen3-style chat template. Only the widths are tiny: 1024x1024 takes about a
second on one CPU thread. The pictures are noise-like, not art.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
)
from tokenizers import AddedToken
from transformers import (  # type: ignore[attr-defined]  # lazy names mypy cannot see
    Qwen2TokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Qwen3's own special tokens, so the chat template renders exactly like the real one.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Qwen3's template reduced to text-only user turns; `enable_thinking=False` adds the empty
# think block, as the real template does and as the pipeline asks for.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

TEXT_HIDDEN = 16
TEXT_LAYERS = 28  # hidden_states[27] must exist for the default out layers (9, 18, 27)
TEXT_OUT_LAYERS = (9, 18, 27)
LATENT_CHANNELS = 4
VOCAB_SIZE = 288  # 256 byte tokens + 5 specials, rounded up


def build_demo_tokenizer() -> Qwen2TokenizerFast:
    """A byte-level BPE (one token per UTF-8 byte, no merges) with Qwen3's specials and template."""
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    # Registered as added tokens so the template's markers are never split into bytes.
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tokenizer.model_max_length = 131072
    return tokenizer


def build_demo_text_encoder(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=TEXT_HIDDEN // 2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=SPECIAL_TOKENS.index("<|endoftext|>") + 256,
    )
    return Qwen3ForCausalLM(config)


def build_demo_transformer(seed: int = 0) -> Flux2Transformer2DModel:
    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # 2x2 patches of the VAE latent, as in the real model
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=1,
        joint_attention_dim=len(TEXT_OUT_LAYERS) * TEXT_HIDDEN,
        timestep_guidance_channels=32,
        mlp_ratio=2.0,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,
    )


def build_demo_vae(seed: int = 0) -> AutoencoderKLFlux2:
    torch.manual_seed(seed)
    # Four blocks → ×8 downsampling. The decoder's last block runs at full resolution, so it is
    # kept at 4 channels; the mid-block attention (over every latent pixel) is left out.
    return AutoencoderKLFlux2(
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        mid_block_add_attention=False,
        sample_size=1024,
    )


def build_demo_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Configured like FLUX.2's scheduler: the pipeline passes `mu`, so dynamic shifting is on."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )


def build_demo_pipeline(seed: int = 0) -> Flux2KleinPipeline:
    """A distilled (4 steps, guidance 1.0) klein pipeline with deterministic tiny random weights."""
    pipe: Any = Flux2KleinPipeline(
        scheduler=build_demo_scheduler(),
        vae=build_demo_vae(seed),
        text_encoder=build_demo_text_encoder(seed),
        tokenizer=build_demo_tokenizer(),
        transformer=build_demo_transformer(seed),
        is_distilled=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
