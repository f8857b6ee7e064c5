"""The batch runner of one gateway process: claims queued items from the database, runs each
as a generation at batch priority, stores its images, and closes the item with its charge in
one transaction; it also keeps the batches moving (lost claims back to the queue, expiry,
terminal statuses) and sends their webhooks.

Any number of processes run one each on a shared database; an item is run by one at a time
(`store/batch_records.py`). Every step is safe to repeat after a crash: a claim that is not
renewed returns to the queue and its reservation is released, and an item is closed, and
charged, only by the run that holds its claim (docs/batches.md, "Exactly once").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

from pixelrouter.errors import PaymentRequired, PixelrouterError, Superseded
from pixelrouter.store import utcnow
from pixelrouter.store.batch_claims import ClaimedItem
from pixelrouter.types import Attribution

from .. import wire
from ..middleware import new_generation_id
from ..state import AppState
from . import items as batch_items
from . import webhooks
from .objects import batch_object

log = logging.getLogger("pixelrouter.batches")

POLL_S = 0.5  # how often an idle runner looks for queued items
UPKEEP_S = 1.0  # how often it moves the batches along (expiry, terminal statuses, webhooks)
# Failures that may pass (no provider ready, one busy or down): the item goes back to the
# queue and this runner pauses, up to this many tries of an item; then the failure stands.
TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})
MAX_ATTEMPTS = 5
PAUSE_S = (1.0, 30.0)  # the first pause after a transient failure, and the longest


class BatchRunner:
    def __init__(self, px: AppState) -> None:
        self.px = px
        s = px.settings
        self.worker = f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.concurrency = s.batch_concurrency
        self.lease = timedelta(seconds=s.batch_lease_s)
        self.running: dict[str, asyncio.Task[None]] = {}  # generation id → its run
        self.wake = asyncio.Event()
        self._webhooks: set[asyncio.Task[None]] = set()
        self._renewed = 0.0
        self._paused_until = 0.0  # after transient failures: no claims before this
        self._pause_s = 0.0

    def poke(self) -> None:
        """Look for work now (a batch was just submitted here)."""
        self.wake.set()

    # -- the loop ----------------------------------------------------------------------------

    async def run_forever(self) -> None:
        last_upkeep = 0.0
        while True:
            try:
                if time.monotonic() - last_upkeep >= UPKEEP_S:
                    last_upkeep = time.monotonic()
                    await self.upkeep()
                if await self.claim():
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the batch runner failed a round; trying again")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_S)

    async def stop(self) -> None:
        """At shutdown: runs in flight are cancelled (their generations released); their
        items return to the queue when their claims run out."""
        tasks = [*self.running.values(), *self._webhooks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        with contextlib.suppress(Exception):  # else their leases run out
            await asyncio.to_thread(self._requeue, utcnow(), self.worker)

    async def claim(self) -> bool:
        """Claim and start as many items as there is room for; whether any were."""
        free = self.concurrency - len(self.running)
        if free <= 0 or not self.px.accepting or time.monotonic() < self._paused_until:
            return False
        if not self.px.router.ready()[0]:
            return False  # an engine still loading, every provider paused: wait, fail nothing
        store = self.px.store
        if not await asyncio.to_thread(store.has_queued_items):
            return False
        until = utcnow() + self.lease
        claimed = await asyncio.to_thread(
            store.claim_batch_items,
            self.worker,
            free,
            until,
            (new_generation_id() for _ in range(free)),
        )
        for item in claimed:
            task = asyncio.get_running_loop().create_task(self._run_logged(item))
            self.running[item.generation_id] = task
            task.add_done_callback(functools.partial(self._done, item.generation_id))
        return bool(claimed)

    def _done(self, generation_id: str, _: object = None) -> None:
        self.running.pop(generation_id, None)
        self.wake.set()

    async def upkeep(self) -> None:
        store = self.px.store
        now = utcnow()
        if self.running and time.monotonic() - self._renewed >= self.lease.total_seconds() / 3:
            self._renewed = time.monotonic()
            await asyncio.to_thread(
                store.renew_batch_leases, self.worker, list(self.running), now + self.lease
            )
        await asyncio.to_thread(self._requeue, now)
        for batch_id in await asyncio.to_thread(store.expired_batch_ids, now):
            await asyncio.to_thread(
                store.end_queued_items,
                batch_id,
                status="expired",
                status_code=408,
                error={
                    "message": "The batch's completion window closed before this request ran.",
                    "param": None,
                    "type": "batch_expired",
                },
            )
        await asyncio.to_thread(store.finalize_batches, now)
        for batch_id in await asyncio.to_thread(store.due_webhooks, now):
            task = asyncio.get_running_loop().create_task(self._send_webhook(batch_id))
            self._webhooks.add(task)
            task.add_done_callback(self._webhooks.discard)

    def _requeue(self, now: Any, worker: str | None = None) -> None:
        """Items whose claim ran out (or this worker's, as it stops) go back to the queue;
        their runs' generations are closed and their reservations released in the same
        transaction."""
        store = self.px.store
        if not store.has_lost_items(now, worker=worker):
            return
        with store.transaction() as tx:
            lost = store.requeue_lost_items(now, tx=tx, worker=worker)
            for generation_id in lost:
                store.finish_generation(
                    generation_id, state="failed", finish_reason="interrupted", tx=tx
                )
                store.release(generation_id, tx=tx)
        if lost:
            log.warning("%d batch item(s) whose claim ran out went back to the queue", len(lost))

    # -- one item ------------------------------------------------------------------------------

    async def _run_logged(self, item: ClaimedItem) -> None:
        try:
            await self.run_item(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s item %d failed unexpectedly", item.batch_id, item.idx)
            with contextlib.suppress(Exception):
                await self._fail(item, 500, {"message": "internal error", "param": None,
                                             "type": "server"})  # fmt: skip

    async def run_item(self, item: ClaimedItem) -> None:
        px = self.px
        key = await asyncio.to_thread(px.store.find_key, item.key_hash)
        if key is None or key.disabled or key.is_expired(utcnow()):
            await self._fail(
                item,
                401,
                {
                    "message": "The batch's key was deleted, disabled or expired.",
                    "param": None,
                    "type": "authentication",
                },  # fmt: skip
            )
            return
        edge = wire.Edge(
            generation_id=item.generation_id,
            key_hash=key.hash,
            attribution=Attribution(title="batch " + item.batch_id),
            catalog=px.catalog,
            fetch=px.fetch_policy,
            loras=px.settings.loras,
        )
        api, _ = batch_items.ENDPOINTS[item.endpoint]
        try:
            request = await batch_items.translate(item.endpoint, item.body, edge)
            admission = await px.service.admit(request, api=api, key=key)  # checks the prompt
        except PaymentRequired as exc:
            await self._fail(item, exc.status, batch_items.error_result(exc))
            if item.on_payment_required == "stop":
                await asyncio.to_thread(
                    px.store.end_queued_items,
                    item.batch_id,
                    status="failed",
                    status_code=402,
                    error=batch_items.error_result(exc),
                    batch_error="The key's spending limit was reached; the requests after it "
                    "were not run (on_payment_required: stop).",
                )
            return
        except PixelrouterError as exc:
            await self._failed(item, exc)
            return
        try:
            delivery = await px.service.route(admission)  # a failure is closed and released
        except PixelrouterError as exc:
            await self._failed(item, exc)
            return
        self._pause_s = 0.0
        try:
            keys = [
                (await px.images.put(image.data, image.media_type)).key
                for image in delivery.result.images
            ]
        except Exception:
            log.exception("%s: the images of a batch item could not be stored", request.id)
            await px.service.books.close_failed(
                admission, error_status=503, error_message="image store failed"
            )
            await self._fail(
                item,
                503,
                {
                    "message": "The images were made but could not be stored; not charged.",
                    "param": None,
                    "type": "server",
                },  # fmt: skip
            )
            return
        body = batch_items.result_body(item.endpoint, delivery, keys)
        store = px.store

        def close_item(tx: Any) -> None:
            if not store.finish_batch_item(
                item.batch_id,
                item.idx,
                item.generation_id,
                status="succeeded",
                status_code=200,
                result=body,
                image_keys=keys,
                cost_micro=delivery.cost_micro,
                prompt_tokens=delivery.prompt_tokens,
                completion_tokens=delivery.completion_tokens,
                provider=delivery.result.provider_name,
                tx=tx,
            ):
                raise Superseded(item.generation_id)

        try:
            await px.service.close_delivered(admission, delivery, close_item)
        except Superseded:
            log.warning(
                "batch %s item %d: its claim ran out while it ran; another run closes it",
                item.batch_id,
                item.idx,
            )

    async def _failed(self, item: ClaimedItem, error: PixelrouterError) -> None:
        """A failure that may pass goes back to the queue (at most `MAX_ATTEMPTS` tries) and
        pauses this runner's claims; any other ends the item with the single endpoint's error."""
        if error.status in TRANSIENT_STATUSES and item.attempts < MAX_ATTEMPTS:
            self._pause_s = min(PAUSE_S[1], max(PAUSE_S[0], self._pause_s * 2))
            self._paused_until = time.monotonic() + self._pause_s
            log.info(
                "batch %s item %d: %s (%d); queued again, claims paused %.0f s",
                item.batch_id,
                item.idx,
                error.message,
                error.status,
                self._pause_s,
            )
            await asyncio.to_thread(
                self.px.store.unclaim_batch_item, item.batch_id, item.idx, item.generation_id
            )
            return
        await self._fail(item, error.status, batch_items.error_result(error))

    async def _fail(self, item: ClaimedItem, status: int, error: dict[str, Any]) -> None:
        await asyncio.to_thread(
            self.px.store.finish_batch_item,
            item.batch_id,
            item.idx,
            item.generation_id,
            status="failed",
            status_code=status,
            result=error,
        )

    # -- webhooks ------------------------------------------------------------------------------

    async def _send_webhook(self, batch_id: str) -> None:
        px = self.px
        store = px.store
        now = utcnow()
        attempt = await asyncio.to_thread(
            store.take_webhook, batch_id, now, now + timedelta(seconds=webhooks.TIMEOUT_S * 3)
        )
        if attempt is None:
            return  # another process has it
        row = await asyncio.to_thread(store.batch_row, batch_id)
        if row is None or not row["callback_url"]:
            return
        counts = await asyncio.to_thread(store.batch_item_counts, [batch_id])
        usage = await asyncio.to_thread(store.batch_usage, batch_id)
        batch = batch_object(row, counts.get(batch_id, {}), usage=usage)
        secret = webhooks.key_secret(px.signing_secret, row["key_hash"])
        allow_private = px.settings.allow_private_image_urls
        delivered, why = await webhooks.deliver(
            row["callback_url"], batch, secret, allow_private=allow_private
        )
        if delivered:
            await asyncio.to_thread(store.webhook_done, batch_id, "delivered")
            return
        if attempt >= px.settings.batch_webhook_attempts:
            log.warning(
                "batch %s: webhook not delivered after %d tries (%s)", batch_id, attempt, why
            )
            await asyncio.to_thread(store.webhook_done, batch_id, "failed")
            return
        retry_at = utcnow() + timedelta(seconds=webhooks.backoff_s(attempt))
        log.info("batch %s: webhook try %d failed (%s); again at %s", batch_id, attempt, why,
                 retry_at.isoformat())  # fmt: skip
        await asyncio.to_thread(store.retry_webhook_at, batch_id, retry_at)
