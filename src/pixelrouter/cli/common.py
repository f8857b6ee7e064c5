"""What the `pixelrouter` commands share: the Typer app and its groups, the console, the
settings and the common options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pixelrouter.config import Settings
from pixelrouter.errors import ConfigError

app = typer.Typer(
    help="pixelrouter: FLUX.2 [klein] 4B behind an OpenRouter-compatible API.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage API keys in the server's database.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
loras_app = typer.Typer(help="LoRA adapters (docs/loras.md).", no_args_is_help=True)
app.add_typer(loras_app, name="loras")
console = Console(stderr=True)


def settings_from(config: Path | None, **flags: Any) -> Settings:
    """`Settings.load`, its errors told as a bad option."""
    try:
        return Settings.load(config, **flags)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc


DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL (sqlite:///... or postgresql://...); env PIXELROUTER_DATABASE_URL",
    ),
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="pixelrouter.toml with a [server] table")
]
