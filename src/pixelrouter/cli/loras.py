"""`pixelrouter loras`: list, add and remove LoRA adapters (docs/loras.md)."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .common import ConfigOption, console, loras_app, settings_from


@loras_app.command("list")
def loras_list(
    config: ConfigOption = None,
    server: Annotated[
        str | None,
        typer.Option(help="Ask a running server (GET /api/v1/loras), e.g. http://127.0.0.1:8000"),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Any key for --server (env PIXELROUTER_API_KEY)")
    ] = None,
) -> None:
    """List the LoRA adapters: those a running server holds and what checking each found
    (--server), or those registered in the config file (not checked: the engine checks them
    when it starts)."""
    if server is not None:
        rows = _server_loras(server, api_key or os.environ.get("PIXELROUTER_API_KEY"))
    else:
        rows = settings_from(config).loras.describe()
    table = Table("name", "models", "scale", "price", "rank", "dtype", "status", "description")
    for row in rows:
        price = row.get("price")
        status = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        table.add_row(
            row["name"],
            ", ".join(row["models"]),
            f"{row['default_scale']:g}",
            "-" if not price else f"${price['first_mp']:g} + ${price['extra_mp']:g}/extra MP",
            "-" if row.get("rank") is None else str(row["rank"]),
            row.get("dtype") or "-",
            status,
            row.get("description") or "",
        )
    if not rows:
        print("no LoRA adapters registered ([[loras]] in pixelrouter.toml)")
        return
    Console(width=200).print(table)


def _server_loras(server: str, key: str | None) -> list[dict[str, Any]]:
    import httpx

    if not key:
        raise typer.BadParameter("--server needs --api-key or PIXELROUTER_API_KEY")
    url = server.rstrip("/")
    if not url.endswith("/api/v1"):
        url += "/api/v1"
    try:
        response = httpx.get(f"{url}/loras", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/] {server} could not be reached ({exc})")
        raise typer.Exit(1) from None
    if response.status_code != 200:
        detail = response.json().get("error", {}).get("message", "") if response.content else ""
        console.print(f"[red]error {response.status_code}:[/] {detail}")
        raise typer.Exit(1)
    data: list[dict[str, Any]] = response.json()["data"]
    return data
