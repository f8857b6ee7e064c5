"""The `pixelrouter` command: serve, generate, keys, loras, batch (one module per group)."""

from __future__ import annotations

import sys

# isort: off
# The commands are listed in the order their modules make them.
from . import serve, generate, keys, loras, batch
from .common import app, settings_from

# isort: on

_settings = settings_from  # the name scripts and tests import

__all__ = ["app", "batch", "generate", "keys", "loras", "main", "serve", "settings_from"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
