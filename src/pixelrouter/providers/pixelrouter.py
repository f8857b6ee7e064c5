"""The `pixelrouter` provider: another pixelrouter instance (a GPU worker), spoken to through
its OpenRouter Image API (`POST {url}/images`), with its queue read from
`GET {url}/engine/status` and the LoRA adapters it holds from `GET {url}/loras`.

The request is forwarded whole (size, n, seed, references, steps, guidance, output format), so
the worker's images are the ones this process would have made; the client's `provider`
preferences are not forwarded (routing happened here), except `batching: false`, sent as the
worker's `provider.options.local` so exact-bytes requests stay exact. A request's LoRA adapters
are sent as `loras: [{name, scale}]`, and only to a worker that lists them `ready`. A worker
that lists an adapter `fused` gets only requests for exactly that adapter at its
`default_scale`: never a base request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, ClassVar

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import PixelrouterError
from pixelrouter.providers.base import ProviderStatus
from pixelrouter.providers.http import HTTPProvider
from pixelrouter.providers.upstream_images import Delivered, RawImage, png_data_url, reference_pngs
from pixelrouter.types import ImageRequest

API_SUFFIX = "/api/v1"


class PixelrouterProvider(HTTPProvider):
    """A pixelrouter worker. The router calls `refresh_status()` now and then; `status()`
    returns what the last call found, and `readiness()` is false while the worker says it is
    not ready or cannot be reached."""

    kind: ClassVar[str] = "pixelrouter"
    passes_error_text: ClassVar[bool] = True  # a worker's errors are written for clients
    default_parameters: ClassVar[tuple[str, ...]] = KLEIN_4B.supported_parameters

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._upstream: dict[str, Any] = {}
        self._polled_at: float | None = None
        self._poll_error: str | None = None
        # The adapters the worker reported `ready` (name -> its models), from the last good
        # answer of `GET {url}/loras`; None until one came.
        self._loras: dict[str, frozenset[str]] | None = None
        self._loras_error: str | None = None
        # The adapter the worker fused into its model, at its scale: the only set it takes.
        self._fused: tuple[str, float] | None = None

    @property
    def service_url(self) -> str:
        """The worker's root (where `/ready` lives): `url` without its `/api/v1`."""
        return self.url.removesuffix(API_SUFFIX)

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        """The worker applies the adapters its `GET /loras` listed `ready` for the model; a
        fused worker makes only its adapter at its scale."""
        fused = self._fused
        if fused is not None and [(c.name, c.scale) for c in request.loras] != [fused]:
            return f"it serves only the LoRA adapter {fused[0]!r}, fused at scale {fused[1]:g}"
        if not request.loras:
            return super().unsupported_reason(request)
        model = self.upstream_model(request)
        held = self._loras or {}
        if all(
            choice.name in held and (not held[choice.name] or model in held[choice.name])
            for choice in request.loras
        ):
            return super().unsupported_reason(dataclasses.replace(request, loras=()))
        return super().unsupported_reason(request)

    @property
    def loras(self) -> dict[str, frozenset[str]]:
        """The adapters the worker last reported `ready`, each with its models."""
        return dict(self._loras or {})

    async def _deliver(self, request: ImageRequest) -> Delivered:
        body: dict[str, Any] = {
            "model": self.upstream_model(request),
            "prompt": request.prompt,
            "n": request.n,
            "size": f"{request.width}x{request.height}",
            "seed": request.seed,
            "output_format": request.output_format,
        }
        if request.output_compression is not None:
            body["output_compression"] = request.output_compression
        if request.steps is not None:
            body["steps"] = request.steps
        if request.guidance is not None:
            body["guidance"] = request.guidance
        if request.references:
            body["input_references"] = [
                {"type": "image_url", "image_url": {"url": png_data_url(png)}}
                for png in await reference_pngs(request)
            ]
        if request.loras:
            body["loras"] = [{"name": c.name, "scale": c.scale} for c in request.loras]
        local: dict[str, Any] = {}
        if not request.batching:
            local["batching"] = False
        if request.priority == "batch":  # the worker runs it only when it is otherwise idle
            local["priority"] = "batch"
        if local:
            body["provider"] = {"options": {"local": local}}
        payload = await self.post_json(f"{self.url}/images", body, what="image request")
        data = payload.get("data")
        if not isinstance(data, list) or not data:
            raise self.error("answered without any image (no 'data').")
        images: list[RawImage] = []
        for index, item in enumerate(data[: request.n]):
            if not isinstance(item, dict):
                raise self.error(f"sent a malformed entry for image {index + 1}.")
            if item.get("b64_json"):
                images.append(RawImage(index, self.decode_b64(item["b64_json"])))
            else:
                images.append(RawImage(index, await self.fetch_image(item.get("url"))))
        usage = payload.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return Delivered(images, tokens if isinstance(tokens, int) else None)

    # ------------------------------------------------------------------ queue and health

    async def refresh_status(self) -> ProviderStatus:
        """Poll `GET {url}/engine/status` and `GET {url}/loras` together (each bounded by
        connect + first-byte timeouts) and return `status()`. Never raises: a failed status
        poll is recorded and shown in `status()`; a failed adapter poll keeps the last good
        list."""
        await asyncio.gather(self._poll_status(), self._poll_loras())
        return self.status()

    async def _poll_loras(self) -> None:
        t = self.config.timeouts
        what = "LoRA adapter poll"
        try:
            async with asyncio.timeout(t.connect_s + t.first_byte_s):
                response = await self.send("GET", f"{self.url}/loras", what=what)
            self.check_status(response, what=what)
            rows = self.parse_json(response, what=what).get("data")
            if not isinstance(rows, list):
                raise self.error(f"sent a {what} answer without a 'data' list.")
        except TimeoutError:
            self._loras_error = "the LoRA adapter poll timed out"
        except PixelrouterError as exc:
            self._loras_error = exc.message
        else:
            ready = [
                row
                for row in rows
                if isinstance(row, dict)
                and isinstance(row.get("name"), str)
                and row.get("status") == "ready"
            ]
            self._loras = {
                row["name"]: frozenset(m for m in row.get("models") or () if isinstance(m, str))
                for row in ready
            }
            self._fused = next(
                (
                    (row["name"], float(row["default_scale"]))
                    for row in ready
                    if row.get("fused") is True
                    and isinstance(row.get("default_scale"), int | float)
                ),
                None,
            )
            self._loras_error = None

    async def _poll_status(self) -> None:
        t = self.config.timeouts
        what = "engine status poll"
        try:
            async with asyncio.timeout(t.connect_s + t.first_byte_s):
                response = await self.send("GET", f"{self.url}/engine/status", what=what)
            self.check_status(response, what=what)
            payload = self.parse_json(response, what=what)
            data = payload.get("data", payload)
            if not isinstance(data, dict):
                raise self.error(f"sent an {what} answer without a 'data' object.")
        except TimeoutError:
            self._poll_error = "the engine status poll timed out"
        except PixelrouterError as exc:
            self._poll_error = exc.message
        else:
            self._upstream = data
            self._poll_error = None
        self._polled_at = time.time()

    def status(self) -> ProviderStatus:
        upstream = self._upstream
        queue_depth = _as_int(upstream.get("queue_depth"))
        max_queue = self.config.max_queue
        full = bool(upstream.get("queue_full")) or (
            max_queue is not None and queue_depth >= max_queue
        )
        state = upstream.get("state") if self._poll_error is None else "unreachable"
        return ProviderStatus(
            state=state if isinstance(state, str) else "unknown",
            queue_depth=queue_depth,
            running_batch=_as_int(upstream.get("running_batch")),
            estimated_wait_s=_as_float(upstream.get("estimated_wait_s")),
            queue_full=full,
            max_queue=max_queue,
            in_flight=self._in_flight,
            queued_images=_known_int(upstream.get("queued_images")),
            running_images=_known_int(upstream.get("running_images")),
            polled_at=self._polled_at,
            error=self._poll_error,
            details=upstream,
        )

    def readiness(self) -> tuple[bool, str]:
        if self._poll_error is not None:
            return False, f"the worker's status could not be read: {self._poll_error}"
        if self._upstream.get("ready") is False:
            return False, f"the worker is not ready: {self._upstream.get('reason') or 'unknown'}"
        return True, "ok"

    async def probe(self) -> bool:
        """The worker's own `GET /ready` answers 200."""
        return await self._get_ok(f"{self.service_url}/ready")


def _as_int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _as_float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _known_int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
