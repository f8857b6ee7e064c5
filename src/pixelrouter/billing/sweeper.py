"""The sweeper: what a stopped process left open is closed, at no cost, by whichever process
is still running (reservations past their expiry, generations left pending)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from pixelrouter.stats.windows import OUTCOME_RETENTION
from pixelrouter.store import Store, utcnow

if TYPE_CHECKING:
    from pixelrouter.config import Settings

log = logging.getLogger("pixelrouter")


def sweep_once(store: Store, settings: Settings) -> tuple[int, int]:
    """Release reservations past their expiry and close generations left pending by a
    crashed process (older than the deadline plus a grace period): both cost nothing."""
    released = store.sweep_reservations()
    stale_before = utcnow() - timedelta(seconds=settings.reservation_ttl_s)
    closed = store.mark_stale_pending(stale_before)
    store.prune_outcomes(utcnow() - OUTCOME_RETENTION)
    return released, closed


async def sweep_forever(store: Store, settings: Settings) -> None:
    while True:
        try:
            released, closed = await asyncio.to_thread(sweep_once, store, settings)
            if released or closed:
                log.warning(
                    "sweeper: released %d reservation(s), closed %d generation(s) "
                    "left by a process that stopped",
                    released,
                    closed,
                )
        except Exception:
            log.exception("the sweeper failed; it tries again")
        await asyncio.sleep(settings.sweep_interval_s)
