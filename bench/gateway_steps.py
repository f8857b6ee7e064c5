"""Where a gateway request's time goes: the pixelrouter ASGI app called in-process (no HTTP
server, no client), against the gateway benchmark's fast upstream in its own process.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/gateway_steps.py [--requests 300] [--json FILE]

Builds the app as `pixelrouter serve --no-engine` would (SQLite in a temporary folder, one
`openai-images` provider: bench/gateway.py's upstream answering a fixed 1024x1024 PNG), makes an
inference key, warms up, then sends `--requests` Image API requests one at a time. Named steps
are timed by wrapping the functions that begin and end them (the middlewares, FastAPI's
dependency solving, the key lookup, the translation, the service, the provider's call and send,
the JSON reading, the rendering); the wrappers cost a microsecond or two each. Prints, for each
mark, the p50 of its time since the request entered the app, and the whole request's p50/p10.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import free_port, wait_for_port
from images import make_png

HERE = Path(__file__).resolve().parent
MODEL = "black-forest-labs/flux.2-klein-4b"
BODY = json.dumps(
    {"model": MODEL, "prompt": "x", "size": "1024x1024", "response_format": "b64_json"}
).encode()

_marks: dict[str, float] = {}


def mark(name: str) -> None:
    _marks.setdefault(name, time.perf_counter())  # the first time in this request


def _wrap_async(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} begins")
        try:
            return await original(*args, **kwargs)
        finally:
            mark(f"{label} ends")

    setattr(owner, name, timed)


def _wrap_sync(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        mark(f"{label} begins")
        try:
            return original(*args, **kwargs)
        finally:
            mark(f"{label} ends")

    setattr(owner, name, timed)


def _wrap_entry(cls: Any, label: str) -> None:
    original = cls.__call__

    async def entered(self: Any, scope: Any, receive: Any, send: Any) -> None:
        mark(label)
        await original(self, scope, receive, send)

    cls.__call__ = entered


def instrument() -> None:
    """Wrap the functions that begin and end the steps (before the app is built)."""
    import fastapi.routing

    from pixelrouter import generations
    from pixelrouter.api import auth, lifecycle, metrics, middleware, responses, wire
    from pixelrouter.api.routes import openai_images
    from pixelrouter.providers import http

    _wrap_entry(metrics.MetricsMiddleware, "metrics middleware entered")
    _wrap_entry(middleware.EdgeMiddleware, "edge middleware entered (reads the body)")
    _wrap_entry(lifecycle.DrainMiddleware, "drain middleware entered")
    _wrap_async(fastapi.routing, "solve_dependencies", "FastAPI dependencies")
    _wrap_async(auth, "_lookup", "key lookup")
    _wrap_sync(openai_images, "edge", "edge context")
    _wrap_sync(wire, "from_openai", "translation")
    _wrap_async(openai_images, "_respond", "route body")
    _wrap_async(generations.GenerationService, "generate", "service")
    _wrap_async(http.HTTPProvider, "generate", "provider")
    _wrap_async(http.HTTPProvider, "send", "upstream exchange")
    _wrap_sync(http.HTTPProvider, "parse_json", "JSON read")
    _wrap_sync(responses.OrjsonResponse, "render", "render")


async def _call(app: Any, path: str, body: bytes, key: str) -> tuple[int, bytes]:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "root_path": "",
        "state": {},
    }
    messages: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return messages[0]["status"], b"".join(m.get("body", b"") for m in messages[1:])


async def _measure(app: Any, admin: str, requests: int) -> dict[str, Any]:
    startup: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, startup.get, events.put)
    )
    started = await events.get()
    if started["type"] != "lifespan.startup.complete":
        raise SystemExit(f"the app did not start: {started}")
    status, body = await _call(app, "/api/v1/keys", b'{"name": "steps"}', admin)
    if status != 201 and status != 200:
        raise SystemExit(f"could not make a key: {status} {body[:300]!r}")
    key = json.loads(body)["key"]
    for _ in range(30):  # warm-up
        status, body = await _call(app, "/api/v1/images/generations", BODY, key)
        if status != 200:
            raise SystemExit(f"warm-up request failed: {status} {body[:300]!r}")
        await asyncio.sleep(0.01)
    rows: list[dict[str, float]] = []
    for _ in range(requests):
        _marks.clear()
        began = time.perf_counter()
        status, _ = await _call(app, "/api/v1/images/generations", BODY, key)
        ended = time.perf_counter()
        assert status == 200
        row = {name: (at - began) * 1e3 for name, at in _marks.items()}
        row["answer sent"] = (ended - began) * 1e3
        rows.append(row)
        await asyncio.sleep(0.02)  # let the bookkeeping written after each answer run
    await startup.put({"type": "lifespan.shutdown"})
    await lifespan
    names = sorted(rows[0], key=lambda n: statistics.median(r[n] for r in rows))
    whole = sorted(r["answer sent"] for r in rows)
    return {
        "requests": requests,
        "marks_p50_ms": {n: round(statistics.median(r[n] for r in rows), 3) for n in names},
        "whole_p50_ms": round(statistics.median(whole), 3),
        "whole_p10_ms": round(whole[len(whole) // 10], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pixelrouter-steps-"))
    png = tmp / "image.png"
    png.write_bytes(make_png())
    port = free_port()
    log = tmp / "upstream.log"
    with log.open("wb") as handle:
        upstream = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "gateway.py"),
                "--role",
                "upstream",
                "--port",
                str(port),
                "--png",
                str(png),
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, upstream, "the upstream", log)
        (tmp / "gw.toml").write_text(
            f"""[server]
db = "sqlite:///{(tmp / "pixelrouter.db").as_posix()}"

[[providers]]
name = "fast-upstream"
type = "openai-images"
url = "http://127.0.0.1:{port}/v1"
api_key = "env:UPSTREAM_KEY"
models = ["{MODEL}"]
"""
        )
        admin = "sk-pr-v1-" + os.urandom(32).hex()
        os.environ.update(
            UPSTREAM_KEY="bench-upstream-key",
            PIXELROUTER_ADMIN_KEY=admin,
            PIXELROUTER_DATA_DIR=str(tmp / "data"),
        )
        instrument()
        from pixelrouter.app import create_app
        from pixelrouter.cli import _settings

        app = create_app(_settings(tmp / "gw.toml", engine=False))
        try:
            import uvloop

            report = uvloop.run(_measure(app, admin, args.requests))
        except ImportError:
            report = asyncio.run(_measure(app, admin, args.requests))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"{report['requests']} requests, p50 ms since the request entered the app:")
    for name, at in report["marks_p50_ms"].items():
        print(f"  {at:7.3f}  {name}")
    print(f"whole request: p50 {report['whole_p50_ms']} ms, p10 {report['whole_p10_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
