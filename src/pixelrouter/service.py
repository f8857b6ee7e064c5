"""One generation from admission to record: reserve its maximum cost, route it, settle to what
was delivered, record it and each provider attempt's outcome (for the statistics).

The API edges call `GenerationService.generate`; it knows nothing of wire shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from pixelrouter.catalog import (
    Catalog,
    Price,
    billable_megapixels,
    estimate_prompt_tokens,
    image_price,
    image_tokens,
    micro_to_usd,
)
from pixelrouter.errors import (
    InvalidRequest,
    PaymentRequired,
    PixelrouterError,
    RoutingFailed,
    ServiceUnavailable,
    UpstreamFailed,
)
from pixelrouter.routing.router import Router
from pixelrouter.stats.outcomes import outcomes_of
from pixelrouter.store import (
    GenerationApi,
    KeyRecord,
    NewGeneration,
    Store,
    is_unreachable,
    utcnow,
)
from pixelrouter.store.stats_records import ProviderOutcome
from pixelrouter.types import ImageRequest, ImageResult, ProgressEvent, ProviderAttempt

log = logging.getLogger(__name__)

# The longest the bookkeeping of an answered generation waits for the edge to say how many of
# its images were handed to the client: past it (a client that stopped reading), none were.
ANSWER_TIMEOUT_S = 120.0
# How long the close of a generation keeps trying while the database is out of reach (a
# restart): its record and charge are written once it is back.
CLOSE_RETRY_S = 120.0


@dataclass
class Admission:
    """A generation that passed admission: its maximum cost is reserved (a key with a limit)
    and it is recorded `pending`; `run` or `abandon` closes it exactly once."""

    request: ImageRequest
    started: float  # monotonic
    reserved_micro: int  # the maximum cost: reserved, or (unreserved) what bounds the charge
    ran: bool = False
    # False for a key that had no spending limit: nothing could refuse it, so nothing was
    # reserved; what is delivered is charged in full once answered (`LedgerRecords.charge`).
    reserved: bool = True
    # The pending record's write, when it runs beside the work (unreserved admissions): awaited
    # before the answer goes out, so a delivered image always has a record.
    recorded: asyncio.Future[Any] | None = None
    # The HTTP edge will say how many images it handed to the client (`answered`).
    edge_reports: bool = False


@dataclass(frozen=True)
class Delivery:
    """A finished generation: the images and what they cost."""

    request: ImageRequest
    result: ImageResult
    cost_micro: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int


@dataclass(frozen=True)
class GenerationEnd:
    """What observers (the /metrics counters) hear when a generation is closed."""

    request_id: str
    state: str  # succeeded | failed | cancelled
    provider_slug: str | None  # the provider that served it
    images: int
    megapixels: int  # billable megapixels delivered
    attempts: tuple[ProviderAttempt, ...] = field(default=())


GenerationObserver = Callable[[GenerationEnd], None]


def _attempts_json(attempts: Sequence[ProviderAttempt]) -> list[dict[str, object]]:
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
        self.observers: list[GenerationObserver] = []
        # Bookkeeping of answered generations still being written, by key hash ("" for none),
        # and the gates that hold each back until its answer has been sent.
        self._closing: dict[str, set[asyncio.Task[None]]] = {}
        # Answers being sent: id → how many images the edge handed to the client.
        self._answers: dict[str, asyncio.Future[int | None]] = {}
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        self.close_retry_s = CLOSE_RETRY_S

    def prompt_tokens(self, prompt: str) -> int:
        for provider in self.router.providers:
            count = provider.count_prompt_tokens(prompt)
            if count is not None:
                return count
        return estimate_prompt_tokens(prompt)

    def _price_of(self, provider_slug: str | None, model: str) -> Price:
        """What one image costs: the serving provider's price, else the model's."""
        for provider in self.router.providers:
            if provider.info.slug == provider_slug:
                return provider.info.price
        return self.catalog.get(model).price

    def max_cost(self, request: ImageRequest) -> int:
        """Every requested image at the resolved size, at the dearest provider the request may
        be served by: of any model it may fall back to, among the providers its preferences
        allow (`only`, `ignore`, `max_price`, ...: a request that names a cheaper provider
        reserves its price, not the dearest one's)."""
        per_image = 0
        for model in (request.model, *request.fallback_models):
            for provider in self.router.eligible(request, model):
                price = image_price(provider.info.price, request.width, request.height)
                per_image = max(per_image, price)
        return request.n * per_image

    async def check_credit(
        self, key: KeyRecord, model: str | None, n: int | None, *, references: int
    ) -> None:
        """Before reference images are decoded (the costly part of reading a request): a key
        whose remaining credit cannot pay for `n` of the cheapest image it could ask for is a
        402 at once. The reservation at admission is the exact check (a request without
        references reaches it without costly work); this one spares the decoding of a request
        that cannot pass it."""
        if key.limit_micro is None or not references:
            return
        try:
            entry = self.catalog.get(model) if model else self.catalog.default
        except PixelrouterError:
            return  # an unknown model: the translation says so
        prices = [p.info.price.first_mp for p in self.router.serves(entry.id)]
        cheapest = min(prices, default=entry.price.first_mp)
        images = max(1, min(int(n or 1), entry.max_images_per_request))
        balance = await asyncio.to_thread(self.store.key_balance, key.hash)
        remaining = balance.remaining(key.limit_micro) or 0
        if remaining < images * cheapest:
            reset = f", resets {key.limit_reset}" if key.limit_reset else ""
            raise PaymentRequired(
                f"This key has {_usd(remaining)} left of its {_usd(key.limit_micro)} "
                f"limit{reset}; {images} image(s) cost at least {_usd(images * cheapest)}. "
                "Ask for fewer images, or raise the key's limit.",
                metadata={
                    "required": micro_to_usd(images * cheapest),
                    "limit_remaining": micro_to_usd(remaining),
                },
            )

    def _payment_required(self, request: ImageRequest, amount: int) -> PaymentRequired:
        assert request.key_hash is not None
        key = self.store.find_key(request.key_hash)
        balance = self.store.key_balance(request.key_hash)
        limit = key.limit_micro if key is not None else None
        remaining = balance.remaining(limit) or 0
        reset = f", resets {key.limit_reset}" if key is not None and key.limit_reset else ""
        return PaymentRequired(
            f"This request can cost up to {_usd(amount)} ({request.n} image(s) of "
            f"{request.width}x{request.height}); this key has {_usd(remaining)} left of its "
            f"{_usd(limit or 0)} limit{reset}. Ask for fewer or smaller images, or raise the "
            "key's limit.",
            metadata={
                "required": micro_to_usd(amount),
                "limit_remaining": micro_to_usd(remaining),
            },
        )

    def _admit_now(self, request: ImageRequest, api: GenerationApi, streamed: bool) -> Admission:
        """Runs in a worker thread: reserve (SPEC §7, or 402) and record `pending`, in one
        transaction: both happen or neither does."""
        amount = self.max_cost(request) if request.key_hash is not None else 0
        try:
            with self.store.transaction() as tx:
                if request.key_hash is not None and not self._reserve(request, amount, tx):
                    raise _LimitReached
                self.store.start_generation(_new_record(request, api, streamed), tx=tx)
        except _LimitReached:
            raise self._payment_required(request, amount) from None
        return Admission(request, time.monotonic(), amount)

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
        edge_reports: bool = False,
    ) -> Admission:
        """Reserve the maximum cost and record the generation, as one unit a client that
        leaves cannot split: if it leaves meanwhile, what was done is undone. With
        `edge_reports`, the HTTP edge says how many images reached the client (`answered`)."""
        await self.check_prompt(request)
        admission = await self._admit(request, api=api, streamed=streamed)
        admission.edge_reports = edge_reports
        return admission

    async def _admit(
        self, request: ImageRequest, *, api: GenerationApi, streamed: bool = False
    ) -> Admission:
        work = asyncio.ensure_future(asyncio.to_thread(self._admit_now, request, api, streamed))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await _shielded(self._undo_admission(work))
            raise

    async def _undo_admission(self, work: asyncio.Future[Admission]) -> None:
        try:
            admission = await work
        except Exception:
            return  # a 402 or a failed insert leaves nothing open
        await self.abandon(admission)

    async def abandon(self, admission: Admission) -> None:
        """Close an admitted generation that will never run (its client left first)."""
        if admission.ran:
            return
        admission.ran = True
        await self._close_failed(
            admission, state="cancelled", cancelled=True, finish_reason="cancelled"
        )

    async def generate(
        self,
        request: ImageRequest,
        *,
        api: GenerationApi,
        streamed: bool = False,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        unlimited_key: bool = False,
        edge_reports: bool = False,
    ) -> Delivery:
        """Admit, then route. With `unlimited_key` (the caller saw no spending limit on the
        key) nothing can refuse the admission, so nothing is reserved: the pending record is
        written beside the work (off the answer's path, as a generation takes longer), and what
        is delivered is charged in full once answered (docs/billing.md, "When bookkeeping is
        written")."""
        await self.check_prompt(request)
        if unlimited_key and request.key_hash is not None:
            admission = Admission(request, time.monotonic(), self.max_cost(request), reserved=False)
            admission.recorded = asyncio.ensure_future(
                asyncio.to_thread(self.store.start_generation, _new_record(request, api, streamed))
            )
        else:
            admission = await self._admit(request, api=api, streamed=streamed)
        admission.edge_reports = edge_reports
        return await self.run(admission, on_progress)

    async def run(
        self,
        admission: Admission,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> Delivery:
        """Route an admitted generation; settle what was delivered, or release everything."""
        request = admission.request
        if admission.ran:
            raise RuntimeError(f"generation {request.id} already ran")
        admission.ran = True

        def elapsed_ms() -> int:
            return int((time.monotonic() - admission.started) * 1000)

        result: ImageResult | None = None
        try:
            result = await self.router.route(request, on_progress)
            delivery = self._price(admission, result, elapsed_ms())
            await self._recorded(admission)  # no answer without its record
        except asyncio.CancelledError:
            await _shielded(
                self._close_failed(
                    admission,
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
                    admission,
                    latency_ms=elapsed_ms(),
                    provider_responses=_attempts_json(exc.attempts),
                    error_status=exc.status,
                    error_message=exc.message,
                    attempts=exc.attempts,
                )
            )
            raise exc.cause from None
        except PixelrouterError as exc:
            await _shielded(
                self._close_failed(
                    admission,
                    latency_ms=elapsed_ms(),
                    error_status=exc.status,
                    error_message=exc.message,
                    attempts=_unusable(result, exc),
                )
            )
            raise
        except Exception:
            await _shielded(
                self._close_failed(admission, error_status=500, error_message="internal error")
            )
            raise
        # Observers (in-memory counters) hear of it now, with the answer; the images exist, so
        # their record is closed whatever the client does now, once the edge said how many it
        # handed over (`closed` and `drain` wait for that).
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
        self._close_later(admission, delivery)
        return delivery

    async def _recorded(self, admission: Admission) -> None:
        """The pending record of an unreserved admission is written (it runs beside the work);
        a database out of reach then is a 503, and the images are not handed out."""
        if admission.recorded is None:
            return
        try:
            await asyncio.shield(admission.recorded)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            raise ServiceUnavailable(
                "The database is not answering, so this generation cannot be recorded; "
                "nothing was charged. Try again in a few seconds.",
                metadata={"reason": "database_unavailable", "retry_after": 2},
                headers={"Retry-After": "2"},
            ) from None

    def _close_later(self, admission: Admission, delivery: Delivery) -> None:
        """Close an answered generation once the edge says how many of its images it handed
        to the client (`answered`); started earlier, its database work would also hold the
        interpreter while the answer is still being sent."""
        request = admission.request
        key = request.key_hash or ""
        verdict: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        if admission.edge_reports:
            self._answers[request.id] = verdict
        else:
            verdict.set_result(None)  # no edge: what the caller received is all of it
        task = asyncio.get_running_loop().create_task(
            _logged(self._after_answer(admission, delivery, verdict))
        )
        tasks = self._closing.setdefault(key, set())
        tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            tasks.discard(finished)
            if not tasks and self._closing.get(key) is tasks:
                del self._closing[key]

        task.add_done_callback(done)

    async def _after_answer(
        self, admission: Admission, delivery: Delivery, verdict: asyncio.Future[int | None]
    ) -> None:
        generation_id = admission.request.id
        try:
            delivered = await asyncio.wait_for(asyncio.shield(verdict), self.answer_timeout_s)
        except TimeoutError:
            log.warning(
                "%s: the answer was not handed over within %g s (the client stopped reading); "
                "its images are not charged",
                generation_id,
                self.answer_timeout_s,
            )
            delivered = 0
        finally:
            self._answers.pop(generation_id, None)
        await self._close_succeeded(admission, delivery, delivered)

    def answered(self, generation_id: str, delivered_images: int | None = None) -> None:
        """The edge is done with this generation's answer: it handed `delivered_images` images
        to the client whole (None: all it was given, or it never knew of any)."""
        verdict = self._answers.get(generation_id)
        if verdict is not None and not verdict.done():
            verdict.set_result(delivered_images)

    def _pending_closes(self, key_hash: str | None) -> list[asyncio.Task[None]]:
        if key_hash is None:
            return [task for tasks in self._closing.values() for task in tasks]
        return list(self._closing.get(key_hash, ()))

    async def closed(self, key_hash: str | None = None) -> None:
        """Wait until the bookkeeping of every generation of this key (of every key: None) that
        has already answered is written: what a caller reads next includes them."""
        pending = self._pending_closes(key_hash)
        if pending:
            await asyncio.wait(pending)

    @property
    def closing(self) -> int:
        """Generations answered whose bookkeeping is still being written."""
        return sum(len(tasks) for tasks in self._closing.values())

    async def drain(self, timeout_s: float) -> None:
        """At shutdown: wait (at most `timeout_s`) for the bookkeeping still being written."""
        pending = self._pending_closes(None)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=timeout_s)
        if late:
            log.warning(
                "%d generation(s) still being recorded at shutdown; the sweeper releases "
                "their reservations after a restart",
                len(late),
            )

    def _price(self, admission: Admission, result: ImageResult, latency_ms: int) -> Delivery:
        """Keep what was asked for (at most n images of the asked size) and price it at the
        serving provider's price, never above what was reserved."""
        request = admission.request
        wanted = [
            image
            for image in result.images
            if (image.width, image.height) == (request.width, request.height)
        ][: request.n]
        if not wanted:
            raise UpstreamFailed(
                f"{result.provider_name} returned no image of the requested size.",
                metadata={"provider": result.provider_name},
            )
        if len(wanted) != len(result.images):
            log.warning(
                "%s returned %d image(s) for %s, %d usable",
                result.provider_name,
                len(result.images),
                request.id,
                len(wanted),
            )
            result = replace(result, images=tuple(wanted))
        price = self._price_of(result.provider_slug, result.model)
        cost = sum(image_price(price, im.width, im.height) for im in wanted)
        if request.key_hash is not None:
            cost = min(cost, admission.reserved_micro)
        completion = sum(image_tokens(im.width, im.height) for im in wanted)
        prompt_tokens = result.prompt_tokens or self.prompt_tokens(request.prompt)
        return Delivery(request, result, cost, prompt_tokens, completion, latency_ms)

    async def _close_succeeded(
        self, admission: Admission, delivery: Delivery, delivered: int | None
    ) -> None:
        """Charge the images handed to the client whole (`delivered`; None: all of them); the
        rest were made for a client that left: the operator's cost, recorded as undelivered."""
        request, result = delivery.request, delivery.result
        made = len(result.images)
        handed = made if delivered is None else max(0, min(delivered, made))
        charge = delivery.cost_micro * handed // made  # every image has the request's size
        record = {
            "state": "succeeded" if handed else "cancelled",
            "cancelled": handed < made,
            "model": result.model,
            "provider_name": result.provider_name,
            "provider_slug": result.provider_slug,
            "total_cost_micro": charge,
            "latency_ms": delivery.latency_ms,
            "generation_time_ms": result.generation_time_ms,
            "finish_reason": "stop" if handed == made else "client_gone",
            "tokens_prompt": delivery.prompt_tokens,
            "tokens_completion": delivery.completion_tokens * handed // made,
            "num_images": handed,
            "undelivered_images": made - handed,
            "provider_responses": _attempts_json(result.attempts),
        }
        if handed < made:
            log.info(
                "%s: %d of %d image(s) were not handed to the client (it left); not charged",
                request.id,
                made - handed,
                made,
            )
            self._notify(
                GenerationEnd(request.id, "undelivered", result.provider_slug, made - handed, 0)
            )
        outcomes = outcomes_of(
            result.attempts,
            model=result.model,
            images=len(result.images),
            image_tokens=delivery.completion_tokens,
        )
        await self._close_soon(admission, record, charge if handed else None, outcomes)

    async def _close_soon(
        self,
        admission: Admission,
        record: dict[str, Any],
        charge_micro: int | None,
        outcomes: list[ProviderOutcome],
    ) -> None:
        """`_close_now` in a worker thread, tried again while the database is out of reach (a
        restart): the record and the money of a delivered image are never given up on for
        that. The transaction is all or nothing, so a retry never writes anything twice."""
        deadline = time.monotonic() + self.close_retry_s
        pause = 0.25
        while True:
            try:
                await asyncio.to_thread(self._close_now, admission, record, charge_micro, outcomes)
                return
            except Exception as exc:
                if not is_unreachable(exc) or time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "%s: the database is out of reach (%s); closing it again in %.2g s",
                    admission.request.id,
                    type(exc).__name__,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _close_now(
        self,
        admission: Admission,
        record: dict[str, Any],
        charge_micro: int | None,
        outcomes: list[ProviderOutcome],
    ) -> None:
        """Runs in a worker thread: finalise the record, settle the reservation to
        `charge_micro` (None: release it all) or, for an unreserved admission, charge it in
        full, and count the provider outcomes, in one transaction. Should the outcomes fail,
        the record and the money are written without them: statistics never break a
        generation."""
        request = admission.request
        key_hash = request.key_hash

        def write(with_outcomes: bool) -> None:
            with self.store.transaction() as tx:
                self.store.finish_generation(request.id, **record, tx=tx)
                if key_hash is not None and admission.reserved:
                    if charge_micro is None:
                        self.store.release(request.id, tx=tx)
                    else:
                        self.store.settle(request.id, charge_micro, tx=tx)
                elif key_hash is not None and charge_micro:
                    # Admitted while the key had no limit: charged in full, even if a limit
                    # was set meanwhile (it applies to requests admitted after it), and even
                    # if the key was deleted (the ledger keeps the charge, as the record).
                    self.store.charge(
                        generation_id=request.id,
                        key_hash=key_hash,
                        amount_micro=charge_micro,
                        tx=tx,
                    )
                if with_outcomes and outcomes:
                    self.store.record_outcomes(outcomes, tx=tx)

        try:
            write(with_outcomes=True)
        except Exception as exc:
            if not outcomes or is_unreachable(exc):
                raise
            log.exception("could not record the provider outcomes of %s", request.id)
            write(with_outcomes=False)

    def _reserve(self, request: ImageRequest, amount_micro: int, tx: Any) -> bool:
        """Reserve against the request's key, in `tx`; False when its limit cannot cover it."""
        assert request.key_hash is not None
        reservation = self.store.reserve(
            generation_id=request.id,
            key_hash=request.key_hash,
            amount_micro=amount_micro,
            expires_at=utcnow() + self.reservation_ttl,
            tx=tx,
        )
        return reservation is not None

    async def _close_failed(
        self, admission: Admission, *, attempts: list[ProviderAttempt] | None = None, **fields: Any
    ) -> None:
        """Failed or cancelled: nothing was delivered, so nothing is charged."""
        request = admission.request
        if admission.recorded is not None:  # the pending row must exist before it is closed
            with contextlib.suppress(Exception):
                await asyncio.shield(admission.recorded)
        fields.setdefault("state", "failed")
        fields.setdefault("finish_reason", "error")
        attempts = attempts or []
        outcomes = outcomes_of(attempts, model=request.model)
        await self._close_soon(admission, fields, None, outcomes)
        self._notify(GenerationEnd(request.id, fields["state"], None, 0, 0, tuple(attempts)))

    def _notify(self, end: GenerationEnd) -> None:
        for observer in self.observers:
            try:
                observer(end)
            except Exception:
                log.exception("a generation observer failed")


class _LimitReached(Exception):
    """The key's limit cannot cover the reservation (a 402 once the transaction is undone)."""


async def _logged(work: Awaitable[None]) -> None:
    """Bookkeeping that runs on its own: a failure is logged, and the sweeper releases what is
    left open."""
    try:
        await work
    except Exception:
        log.exception("could not record the end of a generation")


async def _shielded(work: Awaitable[None]) -> None:
    """Finish bookkeeping even while the task is being cancelled; a failure here is logged, and
    the sweeper releases what is left open."""
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("could not record the end of a generation")


def _unusable(result: ImageResult | None, error: PixelrouterError) -> list[ProviderAttempt]:
    """The attempts of a result that could not be used (no image of the requested size): its
    last, "successful" attempt is the provider's failure after all."""
    if result is None or not result.attempts:
        return []
    last = replace(result.attempts[-1], status=error.status, error=error.message)
    return [*result.attempts[:-1], last]


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
        session_id=request.attribution.session_id,
        trace=request.attribution.trace,
        metadata=request.attribution.metadata,
        adjustments=request.adjustments,
    )
