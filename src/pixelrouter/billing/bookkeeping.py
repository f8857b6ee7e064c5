"""A generation's money and record, from admission to close, exactly once.

Admission reserves the maximum cost and records the generation `pending` in one transaction (a
key with a limit), or, for a key that had no limit, writes the pending record beside the work
and charges what is delivered once answered: nothing could refuse it, so nothing is reserved
(docs/billing.md, "When bookkeeping is written"). An answered generation is closed once the
HTTP edge says how many of its images reached the client whole: those are charged, the rest
are the operator's cost. A failed or cancelled one releases everything. A close is one
transaction (record, ledger, provider outcomes), tried again while the database restarts; on
PostgreSQL the admission and the close are one statement each where they can be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pixelrouter.billing.costs import Costs, Delivery
from pixelrouter.errors import ServiceUnavailable, Superseded
from pixelrouter.stats.outcomes import outcomes_of
from pixelrouter.store import (
    GenerationApi,
    KeyRecord,
    NewGeneration,
    Store,
    is_unreachable,
    utcnow,
)
from pixelrouter.store.request_records import LedgerChange
from pixelrouter.store.stats_records import ProviderOutcome
from pixelrouter.types import GenerationEnd, ImageRequest, ProviderAttempt

log = logging.getLogger("pixelrouter.billing")

# The longest the bookkeeping of an answered generation waits for the edge to say how many of
# its images were handed to the client: past it (a client that stopped reading), none were.
ANSWER_TIMEOUT_S = 120.0
# How long the close of a generation keeps trying while the database is out of reach (a
# restart): its record and charge are written once it is back.
CLOSE_RETRY_S = 120.0


@dataclass
class Admission:
    """A generation that passed admission: its maximum cost is reserved (a key with a limit)
    and it is recorded `pending`; it is closed exactly once (`ran` guards the run)."""

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


def attempts_json(attempts: Sequence[ProviderAttempt]) -> list[dict[str, object]]:
    """The record's `provider_responses`."""
    return [
        {"provider_name": a.provider_name, "status": a.status, "latency": a.latency_ms}
        for a in attempts
    ]


class Bookkeeping:
    """Reservations, records and charges of this process's generations."""

    def __init__(
        self,
        store: Store,
        costs: Costs,
        *,
        reservation_ttl_s: float = 660.0,
        notify: Callable[[GenerationEnd], None] = lambda end: None,
    ) -> None:
        self.store = store
        self.costs = costs
        # The sweeper may release a reservation after this: the deadline plus a grace period.
        self.reservation_ttl = timedelta(seconds=reservation_ttl_s)
        self.notify = notify
        # Bookkeeping of answered generations still being written, by key hash ("" for none).
        self._closing: dict[str, set[asyncio.Task[None]]] = {}
        # Answers being sent: id → how many images the edge handed to the client.
        self._answers: dict[str, asyncio.Future[int | None]] = {}
        self.answer_timeout_s = ANSWER_TIMEOUT_S
        self.close_retry_s = CLOSE_RETRY_S

    # -- admission -----------------------------------------------------------------------

    async def admit(
        self,
        request: ImageRequest,
        *,
        api: GenerationApi,
        streamed: bool = False,
        key: KeyRecord | None = None,
        edge_reports: bool = False,
    ) -> Admission:
        """Admit a request: reserve its maximum cost and record it, as one unit a client that
        leaves cannot split. Given its `key` with no spending limit, nothing can refuse it:
        nothing is reserved, and the pending record is written beside the work (off the
        answer's path, as a generation takes longer)."""
        if key is not None and key.limit_micro is None and request.key_hash is not None:
            admission = Admission(
                request, time.monotonic(), self.costs.max_cost(request), reserved=False
            )
            admission.recorded = asyncio.ensure_future(
                asyncio.to_thread(self.store.start_generation, _new_record(request, api, streamed))
            )
        else:
            work = asyncio.ensure_future(asyncio.to_thread(self._admit_now, request, api, streamed))
            try:
                admission = await asyncio.shield(work)
            except asyncio.CancelledError:
                await shielded(self._undo_admission(work))
                raise
        admission.edge_reports = edge_reports
        return admission

    def _admit_now(self, request: ImageRequest, api: GenerationApi, streamed: bool) -> Admission:
        """Runs in a worker thread: reserve (SPEC §7, or 402) and record `pending`, in one
        transaction: both happen or neither does. On PostgreSQL the common case is one
        statement (`Store.admit_at_once`); anything else takes the transaction."""
        amount = self.costs.max_cost(request) if request.key_hash is not None else 0
        record = _new_record(request, api, streamed)
        if request.key_hash is not None and self.store.admit_at_once(
            record, amount_micro=amount, expires_at=utcnow() + self.reservation_ttl
        ):
            return Admission(request, time.monotonic(), amount)  # one statement (PostgreSQL)
        try:
            with self.store.transaction() as tx:
                if request.key_hash is not None and not self._reserve(request, amount, tx):
                    raise _LimitReached
                self.store.start_generation(record, tx=tx)
        except _LimitReached:
            raise self.costs.payment_required(request, amount) from None
        return Admission(request, time.monotonic(), amount)

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
        await self.close_failed(
            admission, state="cancelled", cancelled=True, finish_reason="cancelled"
        )

    async def recorded(self, admission: Admission) -> None:
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

    # -- answered: charge what reached the client ------------------------------------------

    def close_after_answer(self, admission: Admission, delivery: Delivery) -> None:
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

    async def close_delivered(self, admission: Admission, delivery: Delivery, also: Also) -> None:
        """Charge every image of a delivery that needs no edge (a batch item, whose images are
        stored), with `also` written in the same transaction: the item closed with its charge,
        or neither (`also` raises `Superseded` to undo both)."""
        await self._close_succeeded(admission, delivery, None, also)

    async def _close_succeeded(
        self, admission: Admission, delivery: Delivery, delivered: int | None, also: Also = None
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
            "provider_responses": attempts_json(result.attempts),
        }
        if handed < made:
            log.info(
                "%s: %d of %d image(s) were not handed to the client (it left); not charged",
                request.id,
                made - handed,
                made,
            )
            self.notify(
                GenerationEnd(request.id, "undelivered", result.provider_slug, made - handed, 0)
            )
        outcomes = outcomes_of(
            result.attempts,
            model=result.model,
            images=len(result.images),
            image_tokens=delivery.completion_tokens,
        )
        await self._close_soon(admission, record, charge if handed else None, outcomes, also)

    # -- failed or cancelled: nothing charged ----------------------------------------------

    async def close_failed(
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
        self.notify(GenerationEnd(request.id, fields["state"], None, 0, 0, tuple(attempts)))

    # -- the close: one transaction, tried again while the database restarts ------------------

    async def _close_soon(
        self,
        admission: Admission,
        record: dict[str, Any],
        charge_micro: int | None,
        outcomes: list[ProviderOutcome],
        also: Also = None,
    ) -> None:
        """`_close_now` in a worker thread, tried again while the database is out of reach (a
        restart): the record and the money of a delivered image are never given up on for
        that. The transaction is all or nothing, so a retry never writes anything twice."""
        deadline = time.monotonic() + self.close_retry_s
        pause = 0.25
        while True:
            try:
                await asyncio.to_thread(
                    self._close_now, admission, record, charge_micro, outcomes, also
                )
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
        also: Also = None,
    ) -> None:
        """Runs in a worker thread: finalise the record, settle the reservation to
        `charge_micro` (None: release it all) or, for an unreserved admission, charge it in
        full, and count the provider outcomes, in one transaction (one statement on
        PostgreSQL in the common case: `Store.close_at_once`). Should the outcomes fail, the
        record and the money are written without them: statistics never break a
        generation."""
        request = admission.request
        key_hash = request.key_hash
        ledger: LedgerChange | None = None
        if key_hash is not None and admission.reserved:
            ledger = "release" if charge_micro is None else "settle"
        elif key_hash is not None and charge_micro:
            ledger = "charge"
        if also is None and self.store.close_at_once(
            request.id,
            record,
            ledger=ledger,
            key_hash=key_hash,
            amount_micro=charge_micro or 0,
            outcomes=outcomes,
        ):
            return  # one statement (PostgreSQL); anything else takes the transaction

        def write(with_outcomes: bool) -> None:
            with self.store.transaction() as tx:
                if also is not None:
                    also(tx)  # first: a `Superseded` undoes the whole close
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
            if not outcomes or is_unreachable(exc) or isinstance(exc, Superseded):
                raise
            log.exception("could not record the provider outcomes of %s", request.id)
            write(with_outcomes=False)


# Written in the transaction that closes a generation (`close_delivered`).
Also = Callable[[Any], None] | None


class _LimitReached(Exception):
    """The key's limit cannot cover the reservation (a 402 once the transaction is undone)."""


async def _logged(work: Awaitable[None]) -> None:
    """Bookkeeping that runs on its own: a failure is logged, and the sweeper releases what is
    left open."""
    try:
        await work
    except Exception:
        log.exception("could not record the end of a generation")


async def shielded(work: Awaitable[None]) -> None:
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
        session_id=request.attribution.session_id,
        trace=request.attribution.trace,
        metadata=request.attribution.metadata,
        adjustments=request.adjustments,
        loras=tuple({"name": c.name, "scale": c.scale} for c in request.loras),
    )
