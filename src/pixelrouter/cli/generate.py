"""`pixelrouter generate`: images in-process (--demo or local weights) or on a --server."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pixelrouter.catalog import normalize_output_format
from pixelrouter.config import Settings
from pixelrouter.errors import PixelrouterError

from .common import app, console


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
