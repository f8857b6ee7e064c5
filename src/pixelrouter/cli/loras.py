"""`pixelrouter loras`: list, add and remove LoRA adapters (docs/loras.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .common import ConfigOption, ServerOption, call_api, console, loras_app, settings_from

if TYPE_CHECKING:
    import httpx

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # in a directory diffusers saved
UPLOAD_TIMEOUT_S = 600  # the upload, then the engine checking it between batches

ManagementKeyOption = Annotated[
    str | None, typer.Option(help="A management key (env PIXELROUTER_API_KEY)")
]


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
    (--server), or those of the config file and the uploads kept in its lora_dir (not
    checked: the engine checks them when it starts)."""
    if server is not None:
        response = _call("GET", server, api_key, "loras")
        rows: list[dict[str, Any]] = response.json()["data"]
    else:
        from pixelrouter.errors import ConfigError
        from pixelrouter.lora_files import LoraUploads, restore_uploads

        settings = settings_from(config)
        try:  # the uploads kept in lora_dir too, as the server reads them at start
            restore_uploads(LoraUploads(settings.resolved_lora_dir), settings.loras)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc)) from exc
        rows = settings.loras.describe()
    if not rows:
        print("no LoRA adapters registered ([[loras]] in pixelrouter.toml)")
        return
    _print(rows)


@loras_app.command("add")
def loras_add(
    path: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="The adapter: a diffusers/PEFT .safetensors file, or the directory "
            f"save_lora_weights wrote ({WEIGHT_NAME})",
        ),
    ],
    name: Annotated[str, typer.Option(help="Its name: the model variant <model>:<name>")],
    server: ServerOption,
    models: Annotated[
        list[str] | None, typer.Option("--models", help="A model it is for (repeatable)")
    ] = None,
    scale: Annotated[
        float | None, typer.Option(help="Its scale when a request names none (default 1)")
    ] = None,
    description: Annotated[str | None, typer.Option(help="Shown in /models")] = None,
    price_first_mp: Annotated[
        float | None, typer.Option(help="USD for an image's first megapixel with it")
    ] = None,
    price_extra_mp: Annotated[
        float | None, typer.Option(help="USD for each further megapixel")
    ] = None,
    api_key: ManagementKeyOption = None,
) -> None:
    """Upload an adapter to a running server (POST /api/v1/loras): it is checked there
    (loaded into the pipeline, every target matched against this transformer) and served at
    once; a refusal says why and changes nothing."""
    file = path / WEIGHT_NAME if path.is_dir() else path
    if not file.is_file():
        raise typer.BadParameter(f"{path} holds no {WEIGHT_NAME}", param_hint="PATH")
    fields: dict[str, Any] = {"name": name, "models": models or []}
    for field, value in (
        ("default_scale", scale),
        ("description", description),
        ("price_first_mp", price_first_mp),
        ("price_extra_mp", price_extra_mp),
    ):
        if value is not None:
            fields[field] = str(value)
    with file.open("rb") as handle:  # httpx streams it from disk
        response = _call(
            "POST",
            server,
            api_key,
            "loras",
            data=fields,
            files={"file": (file.name, handle, "application/octet-stream")},
        )
    console.print(f"added {name}")
    _print([response.json()["data"]])


@loras_app.command("remove")
def loras_remove(
    name: Annotated[str, typer.Argument(help="The uploaded adapter's name")],
    server: ServerOption,
    api_key: ManagementKeyOption = None,
) -> None:
    """Remove an uploaded adapter from a running server (DELETE /api/v1/loras/NAME); requests
    already queued with it finish first. Adapters of pixelrouter.toml are removed there."""
    _call("DELETE", server, api_key, f"loras/{name}")
    console.print(f"removed {name}")


def _print(rows: list[dict[str, Any]]) -> None:
    table = Table("name", "models", "scale", "price", "rank", "dtype", "status", "description")
    for row in rows:
        price = row.get("price")
        status = row["status"] + (" (fused)" if row.get("fused") else "")
        status += f": {row['reason']}" if row.get("reason") else ""
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
    Console(width=200).print(table)


def _call(method: str, server: str, key: str | None, path: str, **kwargs: Any) -> httpx.Response:
    """One call to the server's API; its error (in the SPEC envelope) printed and exit 1."""
    return call_api(method, server, key, path, timeout_s=UPLOAD_TIMEOUT_S, **kwargs)
