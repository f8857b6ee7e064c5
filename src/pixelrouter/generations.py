"""One generation from admission to record: admitted by billing, routed, priced, answered.

The API edges call `GenerationService.generate` (or `admit` and `run`, for a stream whose 402
must come before it starts); it knows nothing of wire shapes. What a generation may cost and
what it costs is `billing.costs`; reservations, records and charges are `billing.bookkeeping`;
this module only puts them in order around the router.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from pixelrouter.billing.bookkeeping import (
    Admission,
    Also,
    Bookkeeping,
    attempts_json,
    shielded,
)
from pixelrouter.billing.costs import Costs, Delivery
from pixelrouter.catalog import Catalog, billable_megapixels, estimate_prompt_tokens
from pixelrouter.errors import InvalidRequest, PixelrouterError, RoutingFailed
from pixelrouter.routing.router import Router
from pixelrouter.store import GenerationApi, KeyRecord, Store
from pixelrouter.types import (
    GenerationEnd,
    GenerationObserver,
    ImageRequest,
    ImageResult,
    ProgressEvent,
    ProviderAttempt,
)

log = logging.getLogger(__name__)


class GenerationService:
    def __init__(
        self,
        store: Store,
        router: Router,
        catalog: Catalog,
        *,
        reservation_ttl_s: float = 660.0,
        batch_discount_ppm: int = 0,
    ) -> None:
        self.store = store
        self.router = router
        self.catalog = catalog
        self.observers: list[GenerationObserver] = []
        self.costs = Costs(store, router, catalog, batch_discount_ppm=batch_discount_ppm)
        self.books = Bookkeeping(
            store, self.costs, reservation_ttl_s=reservation_ttl_s, notify=self._notify
        )
        # What the edges ask of the bookkeeping, by name.
        self.check_credit = self.costs.check_credit
        self.abandon = self.books.abandon
        self.answered = self.books.answered
        self.closed = self.books.closed
        self.drain = self.books.drain

    @property
    def closing(self) -> int:
        """Generations answered whose bookkeeping is still being written."""
        return self.books.closing

    def prompt_tokens(self, prompt: str) -> int:
        for provider in self.router.providers:
            count = provider.count_prompt_tokens(prompt)
            if count is not None:
                return count
        return estimate_prompt_tokens(prompt)

    async def check_prompt(self, request: ImageRequest) -> None:
        """A prompt longer than the model's context (in tokens) is a 400 before any work. A
        prompt of no more UTF-8 bytes than the context cannot be longer (a token is at least
        one byte), so only long prompts are counted, off the event loop."""
        context = self.catalog.get(request.model).context_length
        if len(request.prompt) <= context // 4 or len(request.prompt.encode()) <= context:
            return
        tokens = await asyncio.to_thread(self.prompt_tokens, request.prompt)
        if tokens > context:
            raise InvalidRequest(
                f"The prompt is {tokens} tokens long; {request.model} takes at most {context}.",
                error_type="context_length_exceeded",
                metadata={"prompt_tokens": tokens, "context_length": context},
            )

    async def admit(
        self,
        request: ImageRequest,
        *,
        api: GenerationApi,
        streamed: bool = False,
        key: KeyRecord | None = None,
        edge_reports: bool = False,
    ) -> Admission:
        """Check the prompt, then admit (billing reserves and records; a 402 here). With
        `edge_reports`, the HTTP edge says how many images reached the client (`answered`)."""
        await self.check_prompt(request)
        return await self.books.admit(
            request, api=api, streamed=streamed, key=key, edge_reports=edge_reports
        )

    async def generate(
        self,
        request: ImageRequest,
        *,
        api: GenerationApi,
        streamed: bool = False,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        key: KeyRecord | None = None,
        edge_reports: bool = False,
    ) -> Delivery:
        """Admit, then route. Given the request's `key`, billing chooses how to admit it (a key
        without a limit reserves nothing: docs/billing.md, "When bookkeeping is written")."""
        admission = await self.admit(
            request, api=api, streamed=streamed, key=key, edge_reports=edge_reports
        )
        return await self.run(admission, on_progress)

    async def run(
        self,
        admission: Admission,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Delivery:
        """Route an admitted generation; it is closed as delivered, or released in full."""
        delivery = await self.route(admission, on_progress)
        # The images exist, so their record is closed whatever the client does now, once the
        # edge said how many it handed over (`closed` and `drain` wait for that).
        self.books.close_after_answer(admission, delivery)
        return delivery

    async def close_delivered(self, admission: Admission, delivery: Delivery, also: Also) -> None:
        """Close a routed generation whose images need no edge (a batch item's, stored):
        charged in full, with `also` in the same transaction (`Bookkeeping.close_delivered`)."""
        await self.books.close_delivered(admission, delivery, also)

    async def route(
        self,
        admission: Admission,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Delivery:
        """Route an admitted generation and price what it delivered; a failure closes it
        (released in full) and is raised. The caller closes a delivery (`run` does)."""
        request = admission.request
        if admission.ran:
            raise RuntimeError(f"generation {request.id} already ran")
        admission.ran = True
        books = self.books

        def elapsed_ms() -> int:
            return int((time.monotonic() - admission.started) * 1000)

        result: ImageResult | None = None
        try:
            result = await self.router.route(request, on_progress)
            delivery = self.costs.delivery(
                request,
                result,
                reserved_micro=admission.reserved_micro,
                latency_ms=elapsed_ms(),
                prompt_tokens=self.prompt_tokens,
            )
            await books.recorded(admission)  # no answer without its record
        except asyncio.CancelledError:
            await shielded(
                books.close_failed(
                    admission,
                    state="cancelled",
                    cancelled=True,
                    finish_reason="cancelled",
                    latency_ms=elapsed_ms(),
                )
            )
            raise
        except RoutingFailed as exc:
            await shielded(
                books.close_failed(
                    admission,
                    latency_ms=elapsed_ms(),
                    provider_responses=attempts_json(exc.attempts),
                    error_status=exc.status,
                    error_message=exc.message,
                    attempts=exc.attempts,
                )
            )
            raise exc.cause from None
        except PixelrouterError as exc:
            await shielded(
                books.close_failed(
                    admission,
                    latency_ms=elapsed_ms(),
                    error_status=exc.status,
                    error_message=exc.message,
                    attempts=_unusable(result, exc),
                )
            )
            raise
        except Exception:
            await shielded(
                books.close_failed(admission, error_status=500, error_message="internal error")
            )
            raise
        # Observers (in-memory counters) hear of it now, with the answer.
        served = delivery.result
        self._notify(
            GenerationEnd(
                request.id,
                "succeeded",
                served.provider_slug,
                len(served.images),
                sum(billable_megapixels(im.width, im.height) for im in served.images),
                tuple(served.attempts),
            )
        )
        return delivery

    def _notify(self, end: GenerationEnd) -> None:
        for observer in self.observers:
            try:
                observer(end)
            except Exception:
                log.exception("a generation observer failed")


def _unusable(result: ImageResult | None, error: PixelrouterError) -> list[ProviderAttempt]:
    """The attempts of a result that could not be used (no image of the requested size): its
    last, "successful" attempt is the provider's failure after all."""
    if result is None or not result.attempts:
        return []
    last = replace(result.attempts[-1], status=error.status, error=error.message)
    return [*result.attempts[:-1], last]
