"""One generation from admission to record: reserve its maximum cost, route it, settle to what
was delivered, record it.

The API edges call `GenerationService.generate`; it knows nothing of wire shapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pixelrouter.catalog import (
    Catalog,
    estimate_prompt_tokens,
    image_price,
    image_tokens,
    micro_to_usd,
)
from pixelrouter.errors import PaymentRequired, PixelrouterError
from pixelrouter.routing.router import Router, RoutingFailed
from pixelrouter.store import GenerationApi, NewGeneration, Store, utcnow
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


def _usd(micro: int) -> str:
    return f"${micro_to_usd(micro):.6f}".rstrip("0").rstrip(".")


class GenerationService:
    def __init__(
        self,
        store: Store,
        router: Router,
        catalog: Catalog,
        *,
        reservation_ttl_s: float = 660.0,
    ) -> None:
        self.store = store
        self.router = router
        self.catalog = catalog
        # The sweeper may release a reservation after this: the deadline plus a grace period.
        self.reservation_ttl = timedelta(seconds=reservation_ttl_s)

    def prompt_tokens(self, prompt: str) -> int:
        for provider in self.router.providers:
            count = provider.count_prompt_tokens(prompt)
            if count is not None:
                return count
        return estimate_prompt_tokens(prompt)

    def max_cost(self, request: ImageRequest) -> int:
        """Every requested image at the resolved size, at the dearest model it may fall back to."""
        per_image = max(
            image_price(self.catalog.get(model).price, request.width, request.height)
            for model in (request.model, *request.fallback_models)
        )
        return request.n * per_image

    async def _reserve(self, request: ImageRequest) -> None:
        """SPEC §7: the maximum cost is reserved in one atomic step, or 402 before any work."""
        if request.key_hash is None:
            return
        amount = self.max_cost(request)
        reservation = await asyncio.to_thread(
            self.store.reserve,
            generation_id=request.id,
            key_hash=request.key_hash,
            amount_micro=amount,
            expires_at=utcnow() + self.reservation_ttl,
        )
        if reservation is not None:
            return
        key = await asyncio.to_thread(self.store.find_key, request.key_hash)
        balance = await asyncio.to_thread(self.store.key_balance, request.key_hash)
        limit = key.limit_micro if key is not None else None
        remaining = balance.remaining(limit) or 0
        reset = f", resets {key.limit_reset}" if key is not None and key.limit_reset else ""
        raise PaymentRequired(
            f"This request can cost up to {_usd(amount)} ({request.n} image(s) of "
            f"{request.width}x{request.height}); this key has {_usd(remaining)} left of its "
            f"{_usd(limit or 0)} limit{reset}. Ask for fewer or smaller images, or raise the "
            "key's limit.",
            metadata={
                "required": micro_to_usd(amount),
                "limit_remaining": micro_to_usd(remaining),
            },
        )

    async def generate(
        self,
        request: ImageRequest,
        *,
        api: GenerationApi,
        streamed: bool = False,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Delivery:
        started = time.monotonic()
        await self._reserve(request)
        insert = asyncio.ensure_future(
            asyncio.to_thread(self.store.start_generation, _new_record(request, api, streamed))
        )
        try:
            # Shielded: a client leaving mid-insert must not leave a pending row behind.
            await asyncio.shield(insert)
        except asyncio.CancelledError:
            await _shielded(self._abandon(request, insert))
            raise
        except BaseException:
            await _shielded(self._release(request))
            raise

        def elapsed_ms() -> int:
            return int((time.monotonic() - started) * 1000)

        try:
            result = await self.router.route(request, on_progress)
        except asyncio.CancelledError:
            await _shielded(
                self._close_failed(
                    request,
                    state="cancelled",
                    cancelled=True,
                    finish_reason="cancelled",
                    latency_ms=elapsed_ms(),
                )
            )
            raise
        except RoutingFailed as exc:
            await _shielded(
                self._close_failed(
                    request,
                    latency_ms=elapsed_ms(),
                    provider_responses=_attempts_json(exc.attempts),
                    error_status=exc.status,
                    error_message=exc.message,
                )
            )
            raise exc.cause from None
        except PixelrouterError as exc:
            await _shielded(
                self._close_failed(
                    request,
                    latency_ms=elapsed_ms(),
                    error_status=exc.status,
                    error_message=exc.message,
                )
            )
            raise
        except Exception:
            await _shielded(
                self._close_failed(request, error_status=500, error_message="internal error")
            )
            raise
        entry = self.catalog.get(result.model)
        cost = sum(image_price(entry.price, im.width, im.height) for im in result.images)
        completion = sum(image_tokens(im.width, im.height) for im in result.images)
        prompt_tokens = result.prompt_tokens or self.prompt_tokens(request.prompt)
        latency_ms = elapsed_ms()
        # Recorded and settled even if the client goes away now: the images exist.
        await _shielded(
            self._close_succeeded(request, result, cost, completion, prompt_tokens, latency_ms)
        )
        return Delivery(request, result, cost, prompt_tokens, completion, latency_ms)

    async def _close_succeeded(
        self,
        request: ImageRequest,
        result: ImageResult,
        cost: int,
        completion: int,
        prompt_tokens: int,
        latency_ms: int,
    ) -> None:
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
        if request.key_hash is not None:
            await asyncio.to_thread(self.store.settle, request.id, cost)

    async def _release(self, request: ImageRequest) -> None:
        if request.key_hash is not None:
            await asyncio.to_thread(self.store.release, request.id)

    async def _abandon(self, request: ImageRequest, insert: asyncio.Future[Any]) -> None:
        """The client left while its record was being written: close it as cancelled."""
        try:
            await insert
        except Exception:
            await self._release(request)
            return
        await self._close_failed(
            request, state="cancelled", cancelled=True, finish_reason="cancelled"
        )

    async def _close_failed(self, request: ImageRequest, **fields: Any) -> None:
        """Failed or cancelled: nothing was delivered, so nothing is charged."""
        fields.setdefault("state", "failed")
        fields.setdefault("finish_reason", "error")
        await asyncio.to_thread(self.store.finish_generation, request.id, **fields)
        await self._release(request)


async def _shielded(work: Awaitable[None]) -> None:
    """Finish bookkeeping even while the task is being cancelled; a failure here is logged, and
    the sweeper releases what is left open."""
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("could not record the end of a generation")


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
