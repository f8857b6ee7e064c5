"""LoRA adapters made in the test: PEFT's `LoraConfig` on the demo transformer's attention and
feed-forward projections (the engine's `LORA_TARGETS`), random weights, saved in diffusers'
format."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_adapter(directory: Path, seed: int, rank: int = 4, alpha: int = 8) -> Path:
    """A diffusers-format adapter directory (pytorch_lora_weights.safetensors) with random
    lora_A and lora_B, so applying it changes the image."""
    import torch
    from diffusers import Flux2KleinPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from pixelrouter.engine.adapters import LORA_TARGETS
    from pixelrouter.engine.demo import build_demo_transformer

    transformer: Any = build_demo_transformer()
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS), init_lora_weights=False
    )
    torch.manual_seed(seed)
    transformer.add_adapter(config, adapter_name="made")
    with torch.no_grad():  # large enough that the tiny model's image visibly changes
        for name, parameter in transformer.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 0.5)
    layers = get_peft_model_state_dict(transformer, adapter_name="made")
    Flux2KleinPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=layers,
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return directory
