"""The demo pipeline keeps the real model's shape rules, tokenizer format and defaults."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import Flux2KleinPipeline

from pixelrouter.engine.demo import TEXT_HIDDEN, build_demo_pipeline


def test_it_is_the_real_pipeline_class_with_klein_shape_rules(demo_pipe: Any) -> None:
    assert type(demo_pipe) is Flux2KleinPipeline
    assert demo_pipe.config.is_distilled is True
    assert demo_pipe.vae_scale_factor == 8
    latent_channels = demo_pipe.vae.config.latent_channels
    assert demo_pipe.transformer.config.in_channels == 4 * latent_channels
    assert demo_pipe.transformer.config.joint_attention_dim == 3 * TEXT_HIDDEN
    assert demo_pipe.text_encoder.config.num_hidden_layers >= 28
    assert demo_pipe.scheduler.config.use_dynamic_shifting is True


def test_1024_square_is_4096_image_tokens(demo_pipe: Any) -> None:
    latents, ids = demo_pipe.prepare_latents(
        batch_size=1,
        num_latents_channels=demo_pipe.transformer.config.in_channels // 4,
        height=1024,
        width=1024,
        dtype=torch.float32,
        device=torch.device("cpu"),
        generator=torch.Generator("cpu").manual_seed(0),
    )
    assert latents.shape[1] == 4096
    assert ids.shape[1] == 4096


def test_chat_template_renders_like_qwen3_without_thinking(demo_pipe: Any) -> None:
    text = demo_pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    assert (
        text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    ids = demo_pipe.tokenizer(text, padding="max_length", truncation=True, max_length=512)
    assert len(ids["input_ids"]) == 512
    assert ids["input_ids"][0] == demo_pipe.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert sum(ids["attention_mask"]) < 512  # the rest is padding


def test_building_is_deterministic(demo_pipe: Any) -> None:
    other = build_demo_pipeline()
    for name in ("transformer", "vae", "text_encoder"):
        mine, theirs = getattr(demo_pipe, name).state_dict(), getattr(other, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name
