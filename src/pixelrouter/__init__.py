"""pixelrouter: a self-hosted, OpenRouter-compatible image API for FLUX.2 [klein] 4B."""

__version__ = "0.1.0"
