"""`pixelrouter serve`: the API and the engine on HOST:PORT."""

from __future__ import annotations

from typing import Annotated

import typer

from pixelrouter.config import DEFAULT_MODEL
from pixelrouter.errors import ConfigError

from .common import ConfigOption, DbOption, app, console, settings_from


@app.command()
def serve(
    demo: Annotated[
        bool, typer.Option("--demo", help="Tiny random weights: runs offline, images are noise")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Interface to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
    model: Annotated[
        str | None,
        typer.Option(help=f"Weights: a diffusers directory or Hugging Face id ({DEFAULT_MODEL})"),
    ] = None,
    no_engine: Annotated[
        bool, typer.Option("--no-engine", help="A pure gateway: no local engine")
    ] = False,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:1, cpu (default: auto)")] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bfloat16, float16, float32 (default: bf16 on GPU)")
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Images per engine batch (default 4)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="On SIGTERM: seconds generations in flight get to finish before they are "
            "cancelled (a second signal cuts it short); env PIXELROUTER_DRAIN_TIMEOUT_S, "
            "default 30",
        ),
    ] = None,
    random_weights: Annotated[
        str | None,
        typer.Option(
            "--random-weights",
            help="full: klein 4B's real architecture with random bf16 weights (a GPU load-test "
            "target, no download); small: the same structure, CPU-sized. Images are noise. "
            "Env PIXELROUTER_RANDOM_WEIGHTS",
        ),
    ] = None,
) -> None:
    """Serve the API (and the engine) on HOST:PORT."""
    import logging

    from pixelrouter.api import lifecycle
    from pixelrouter.app import create_app

    settings = settings_from(
        config,
        demo=demo or None,
        host=host,
        port=port,
        database_url=db,
        model=model,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        random_weights=random_weights,
        drain_timeout_s=drain_timeout,
    )
    random_weights = settings.random_weights
    if random_weights is not None and random_weights not in ("full", "small"):
        raise typer.BadParameter("use full or small", param_hint="--random-weights")
    if no_engine:
        settings.engine = False
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.demo:
        console.print(
            "[yellow]Demo mode:[/] the engine runs tiny RANDOM weights. Every code path is real, "
            "but the images are noise."
        )
    if random_weights is not None:
        console.print(
            f"[yellow]Random weights ({random_weights}):[/] klein 4B's architecture with random "
            "weights, for load tests; the images are noise."
        )
    console.print(f"pixelrouter on http://{settings.host}:{settings.port}  (API: /api/v1)")
    try:
        api = create_app(settings)
    except ConfigError as exc:  # the uploaded adapters' list (lora_dir) is broken or clashes
        raise typer.BadParameter(str(exc)) from exc
    lifecycle.serve(
        api,
        api.state.lifecycle,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
    )
