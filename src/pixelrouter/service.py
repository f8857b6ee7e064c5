"""One generation from admission to record: route it, price what was delivered, record it.

The API edges call `GenerationService.generate`; it knows nothing of wire shapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pixelrouter.catalog import Catalog, estimate_prompt_tokens, image_price, image_tokens
from pixelrouter.errors import PixelrouterError
from pixelrouter.routing.router import Router, RoutingFailed
from pixelrouter.store import GenerationApi, NewGeneration, Store
from pixelrouter.types import ImageRequest, ImageResult, ProgressEvent, ProviderAttempt

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """A finished generation: the images and what they cost."""

    request: ImageRequest
    result: ImageResult
    cost_micro: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int


def _attempts_json(attempts: list[ProviderAttempt]) -> list[dict[str, object]]:
    return [
        {"provider_name": a.provider_name, "status": a.status, "latency": a.latency_ms}
        for a in attempts
    ]


class GenerationService:
    def __init__(self, store: Store, router: Router, catalog: Catalog) -> None:
        self.store = store
        self.router = router
        self.catalog = catalog

    def prompt_tokens(self, prompt: str) -> int:
        for provider in self.router.providers:
            count = provider.count_prompt_tokens(prompt)
            if count is not None:
                return count
        return estimate_prompt_tokens(prompt)

    async def generate(
        self,
        request: ImageRequest,
        *,
        api: GenerationApi,
        streamed: bool = False,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Delivery:
        started = time.monotonic()
        await asyncio.to_thread(self.store.start_generation, _new_record(request, api, streamed))
        try:
            result = await self.router.route(request, on_progress)
        except asyncio.CancelledError:
            await _finish_quietly(
                self.store,
                request.id,
                state="cancelled",
                cancelled=True,
                finish_reason="cancelled",
                latency_ms=int((time.monotonic() - started) * 1000),
            )
            raise
        except RoutingFailed as exc:
            await asyncio.to_thread(
                self.store.finish_generation,
                request.id,
                state="failed",
                finish_reason="error",
                latency_ms=int((time.monotonic() - started) * 1000),
                provider_responses=_attempts_json(exc.attempts),
                error_status=exc.status,
                error_message=exc.message,
            )
            raise exc.cause from None
        except PixelrouterError as exc:
            await asyncio.to_thread(
                self.store.finish_generation,
                request.id,
                state="failed",
                finish_reason="error",
                latency_ms=int((time.monotonic() - started) * 1000),
                error_status=exc.status,
                error_message=exc.message,
            )
            raise
        except Exception:
            await _finish_quietly(
                self.store,
                request.id,
                state="failed",
                finish_reason="error",
                error_status=500,
                error_message="internal error",
            )
            raise
        entry = self.catalog.get(result.model)
        cost = sum(image_price(entry.price, im.width, im.height) for im in result.images)
        completion = sum(image_tokens(im.width, im.height) for im in result.images)
        prompt_tokens = result.prompt_tokens or self.prompt_tokens(request.prompt)
        latency_ms = int((time.monotonic() - started) * 1000)
        await asyncio.to_thread(
            self.store.finish_generation,
            request.id,
            state="succeeded",
            model=result.model,
            provider_name=result.provider_name,
            provider_slug=result.provider_slug,
            total_cost_micro=cost,
            latency_ms=latency_ms,
            generation_time_ms=result.generation_time_ms,
            finish_reason="stop",
            tokens_prompt=prompt_tokens,
            tokens_completion=completion,
            num_images=len(result.images),
            provider_responses=_attempts_json(result.attempts),
        )
        return Delivery(request, result, cost, prompt_tokens, completion, latency_ms)


async def _finish_quietly(store: Store, generation_id: str, **fields: Any) -> None:
    """Record a final state even while the task is being cancelled."""
    try:
        await asyncio.shield(asyncio.to_thread(store.finish_generation, generation_id, **fields))
    except BaseException:  # the record is swept at the next start if this fails
        log.exception("could not record the end of generation %s", generation_id)


def _new_record(request: ImageRequest, api: GenerationApi, streamed: bool) -> NewGeneration:
    return NewGeneration(
        id=request.id,
        key_hash=request.key_hash,
        model=request.model,
        api=api,
        n=request.n,
        width=request.width,
        height=request.height,
        seed=request.seed,
        streamed=streamed,
        http_referer=request.attribution.referer,
        app_title=request.attribution.title,
        app_categories=request.attribution.categories,
        user=request.attribution.user,
        ignored_parameters=request.ignored_parameters,
    )
