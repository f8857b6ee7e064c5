"""What the `pixelrouter` commands share: the Typer app and its groups, the console, the
settings and the common options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from pixelrouter.config import Settings
from pixelrouter.errors import ConfigError

if TYPE_CHECKING:
    import httpx

app = typer.Typer(
    help="pixelrouter: FLUX.2 [klein] 4B behind an OpenRouter-compatible API.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Manage API keys in the server's database.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
loras_app = typer.Typer(help="LoRA adapters (docs/loras.md).", no_args_is_help=True)
app.add_typer(loras_app, name="loras")
batch_app = typer.Typer(
    help="The Batch API on a running server (docs/batches.md).", no_args_is_help=True
)
app.add_typer(batch_app, name="batch")
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
ServerOption = Annotated[
    str, typer.Option(help="The running server, e.g. http://127.0.0.1:8000", show_default=False)
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="pixelrouter.toml with a [server] table")
]


def call_api(
    method: str, server: str, key: str | None, path: str, *, timeout_s: float, **kwargs: Any
) -> httpx.Response:
    """One call to a running server's API (`server` with or without /api/v1; the key from
    --api-key or PIXELROUTER_API_KEY); its error (in the SPEC envelope) printed and exit 1."""
    import httpx

    key = key or os.environ.get("PIXELROUTER_API_KEY")
    if not key:
        raise typer.BadParameter("--server needs --api-key or PIXELROUTER_API_KEY")
    url = server.rstrip("/")
    if not url.endswith("/api/v1"):
        url += "/api/v1"
    try:
        response = httpx.request(
            method,
            f"{url}/{path}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(timeout_s, connect=10),
            **kwargs,
        )
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/] {server} could not be reached ({exc})")
        raise typer.Exit(1) from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("error", {}).get("message", "")
        except ValueError:
            detail = response.text[:200]
        console.print(f"[red]error {response.status_code}:[/] {detail}")
        raise typer.Exit(1)
    return response
