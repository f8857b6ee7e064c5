"""The `pixelrouter` command: serve, generate, keys, loras."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pixelrouter.catalog import normalize_output_format, usd_to_micro
from pixelrouter.config import DEFAULT_MODEL, Settings
from pixelrouter.errors import ConfigError, PixelrouterError

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


def _settings(config: Path | None, **flags: Any) -> Settings:
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

    settings = _settings(
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
    api = create_app(settings)
    lifecycle.serve(
        api,
        api.state.lifecycle,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
    )


def _output_paths(output: Path | None, n: int, seed: int, fmt: str) -> list[Path]:
    base = output or Path(f"pixelrouter-{seed}.{fmt}")
    if n == 1:
        return [base]
    return [base.with_name(f"{base.stem}-{i + 1}{base.suffix}") for i in range(n)]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output file")] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, e.g. 1024x1024")] = None,
    aspect_ratio: Annotated[str | None, typer.Option(help="1:1, 16:9, ... or auto")] = None,
    resolution: Annotated[str | None, typer.Option(help="0.5K, 1K (default) or 2K")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; image i uses seed + i")] = None,
    n: Annotated[int, typer.Option("-n", min=1, max=4, help="Number of images (1-4)")] = 1,
    reference: Annotated[
        list[Path] | None, typer.Option("-i", "--image", help="Reference image (repeatable)")
    ] = None,
    output_format: Annotated[str, typer.Option("--format", help="png, jpeg or webp")] = "png",
    demo: Annotated[bool, typer.Option("--demo", help="Use the demo engine in-process")] = False,
    model: Annotated[str | None, typer.Option(help="Weights for the in-process engine")] = None,
    server: Annotated[
        str | None, typer.Option(help="Generate on a running server, e.g. http://127.0.0.1:8000")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(help="Inference key for --server (env PIXELROUTER_API_KEY)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (model default)")] = None,
) -> None:
    """Generate images, in-process (--demo or local weights) or on a --server."""
    import httpx

    refs = [p.read_bytes() for p in reference or []]
    try:
        output_format = normalize_output_format(output_format)
        if server:
            key = api_key or os.environ.get("PIXELROUTER_API_KEY")
            if not key:
                raise typer.BadParameter("--server needs --api-key or PIXELROUTER_API_KEY")
            images, used_seed = _generate_remote(
                server, key, prompt, size, aspect_ratio, resolution, seed, n, refs, output_format
            )
        else:
            images, used_seed = asyncio.run(
                _generate_local(
                    prompt,
                    size,
                    aspect_ratio,
                    resolution,
                    seed,
                    n,
                    refs,
                    output_format,
                    demo,
                    model,
                    steps,
                )
            )
    except PixelrouterError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/] cannot reach {server}: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    for path, data in zip(
        _output_paths(output, len(images), used_seed, output_format), images, strict=True
    ):
        path.write_bytes(data)
        console.print(f"wrote {path}")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]denoising"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
    )


async def _generate_local(
    prompt: str,
    size: str | None,
    aspect_ratio: str | None,
    resolution: str | None,
    seed: int | None,
    n: int,
    refs: list[bytes],
    output_format: str,
    demo: bool,
    model: str | None,
    steps: int | None,
) -> tuple[list[bytes], int]:
    import secrets

    from pixelrouter.api.middleware import new_generation_id
    from pixelrouter.catalog import KLEIN_4B, resolve_size
    from pixelrouter.providers import local_provider
    from pixelrouter.refimages import decode_reference
    from pixelrouter.types import ImageRequest

    references = tuple(decode_reference(data, position=i + 1) for i, data in enumerate(refs))
    ref_size = (references[0].source_width, references[0].source_height) if references else None
    width, height = resolve_size(
        size=size, aspect_ratio=aspect_ratio, tier=resolution, reference_size=ref_size
    )
    used_seed = seed if seed is not None else secrets.randbelow(2**32)
    settings = Settings.from_env(demo=demo or None, model=model)
    provider = local_provider(settings)
    request = ImageRequest(
        id=new_generation_id(),
        model=KLEIN_4B.id,
        prompt=prompt,
        width=width,
        height=height,
        n=n,
        seed=used_seed,
        seed_given=True,
        steps=steps,
        references=references,
        output_format=output_format,  # type: ignore[arg-type]
        batching=False,
    )
    try:
        with console.status("loading the pipeline"):
            while True:
                ready, reason = provider.readiness()
                if ready or "loading" not in reason:
                    break
                await asyncio.sleep(0.05)
        with _progress() as bar:
            task = bar.add_task("denoising", total=None)

            def on_progress(event: Any) -> None:
                bar.update(task, completed=event.step, total=event.total_steps)

            result = await provider.generate(request, on_progress)
    finally:
        await provider.aclose()
    return [image.data for image in result.images], used_seed


def _generate_remote(
    server: str,
    key: str,
    prompt: str,
    size: str | None,
    aspect_ratio: str | None,
    resolution: str | None,
    seed: int | None,
    n: int,
    refs: list[bytes],
    output_format: str,
) -> tuple[list[bytes], int]:
    import secrets

    import httpx
    import orjson

    from pixelrouter.sse import read_progress

    used_seed = seed if seed is not None else secrets.randbelow(2**32)
    body: dict[str, Any] = {
        "prompt": prompt,
        "n": n,
        "seed": used_seed,
        "output_format": output_format,
        "stream": True,
    }
    for name, value in (("size", size), ("aspect_ratio", aspect_ratio), ("resolution", resolution)):
        if value is not None:
            body[name] = value
    if refs:
        body["input_references"] = [
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(r).decode()},
            }
            for r in refs
        ]
    url = server.rstrip("/")
    if not url.endswith("/api/v1"):
        url += "/api/v1"
    images: list[bytes] = []
    headers = {"Authorization": f"Bearer {key}"}
    with _progress() as bar, httpx.Client(timeout=httpx.Timeout(600, connect=10)) as client:
        task = bar.add_task("denoising", total=None)
        with client.stream("POST", f"{url}/images", json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = orjson.loads(response.read()).get("error", {}).get("message", "")
                console.print(f"[red]error {response.status_code}:[/] {detail}")
                raise typer.Exit(1)
            for line in response.iter_lines():
                progress = read_progress(line)
                if progress is not None:
                    bar.update(task, completed=progress[0], total=progress[1])
                elif line.startswith("data: ") and line != "data: [DONE]":
                    event = orjson.loads(line[6:])
                    if event.get("type") == "error":
                        console.print(f"[red]error:[/] {event['error']['message']}")
                        raise typer.Exit(1)
                    if event.get("type") == "image_generation.completed":
                        images.append(base64.b64decode(event["b64_json"]))
    return images, used_seed


# ---------------------------------------------------------------------------- keys


def _store(db: str | None, config: Path | None):
    from pixelrouter.store import Store

    settings = _settings(config, database_url=db)
    store = Store(settings.resolved_database_url)
    store.migrate()
    return store


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by")] = "default",
    limit: Annotated[float | None, typer.Option(min=0, max=1e9, help="Credit limit in USD")] = None,
    reset: Annotated[str | None, typer.Option(help="Limit reset: daily, weekly or monthly")] = None,
    management: Annotated[
        bool, typer.Option("--management", help="A management key (manages keys)")
    ] = False,
    rate_limit: Annotated[
        str | None,
        typer.Option(help="Generation requests per interval, e.g. 60/60s (default: server's)"),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once."""
    requests, interval = _parse_rate_limit(rate_limit)
    if reset is not None and reset not in ("daily", "weekly", "monthly"):
        raise typer.BadParameter("--reset must be daily, weekly or monthly")
    with _store(db, config) as store:
        record, plaintext = store.create_key(
            name=name,
            kind="management" if management else "inference",
            limit_micro=None if limit is None else usd_to_micro(limit),
            limit_reset=reset,
            rate_limit_requests=requests,
            rate_limit_interval_s=interval,
        )
    console.print(f"created {record.kind} key {record.label} (hash {record.hash})")
    console.print("The key is shown only now:")
    print(plaintext)


def _parse_rate_limit(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    count, _, interval = text.partition("/")
    try:
        requests, seconds = int(count), int(interval.removesuffix("s") or 60)
    except ValueError:
        requests = seconds = 0
    if requests < 1 or seconds < 1:
        raise typer.BadParameter("--rate-limit looks like 60/60s (requests/seconds, both ≥ 1)")
    return requests, seconds


def _find_one(store: Any, key_hash: str) -> Any:
    matches = [r for r in store.list_keys() if r.hash.startswith(key_hash)]
    if len(matches) != 1:
        console.print(f"[red]error:[/] {len(matches)} keys match {key_hash!r}")
        raise typer.Exit(1)
    return matches[0]


@keys_app.command("usage")
def keys_usage(
    key_hash: Annotated[str, typer.Argument(help="The key's hash, or a unique prefix of it")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """A key's spend: all time, today, this week, this month, and what is left."""
    from pixelrouter.catalog import micro_to_usd

    with _store(db, config) as store:
        record = _find_one(store, key_hash)
        usage = store.key_usage(record.hash)
        balance = store.key_balance(record.hash)
    remaining = balance.remaining(record.limit_micro)
    rows = {
        "key": f"{record.label} ({record.name})",
        "usage": f"${micro_to_usd(usage.total):.6f}",
        "today": f"${micro_to_usd(usage.daily):.6f}",
        "this week": f"${micro_to_usd(usage.weekly):.6f}",
        "this month": f"${micro_to_usd(usage.monthly):.6f}",
        "reserved now": f"${micro_to_usd(balance.reserved):.6f}",
        "limit": "none"
        if record.limit_micro is None
        else f"${micro_to_usd(record.limit_micro):.6f} {record.limit_reset or 'in all'}",
        "remaining": "no limit" if remaining is None else f"${micro_to_usd(remaining):.6f}",
    }
    for name, value in rows.items():
        print(f"{name:>13}: {value}")


@keys_app.command("list")
def keys_list(db: DbOption = None, config: ConfigOption = None) -> None:
    """List keys (labels and hashes, never the keys)."""
    from pixelrouter.catalog import micro_to_usd

    with _store(db, config) as store:
        table = Table("hash", "name", "label", "kind", "disabled", "limit", "usage")
        for record in store.list_keys():
            usage = store.key_usage(record.hash)
            limit = "-" if record.limit_micro is None else f"${micro_to_usd(record.limit_micro)}"
            table.add_row(
                record.hash[:16],
                record.name,
                record.label,
                record.kind,
                "yes" if record.disabled else "no",
                limit + (f" {record.limit_reset}" if record.limit_reset else ""),
                f"${micro_to_usd(usage.total):.6f}",
            )
    Console().print(table)


@keys_app.command("disable")
def keys_disable(
    key_hash: Annotated[str, typer.Argument(help="The key's hash, or a unique prefix of it")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Disable a key: it answers 401 from now on."""
    from pixelrouter.errors import LastManagementKey

    with _store(db, config) as store:
        record = _find_one(store, key_hash)
        try:
            store.update_key(record.hash, disabled=True)
        except LastManagementKey as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    console.print(f"disabled {record.label}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------- loras


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
        rows = _settings(config).loras.describe()
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
