"""A bounded queue: past `max_queue_images` the engine says it is full and refuses more, so
routing sends the work elsewhere instead of letting it wait."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from pixelrouter.errors import ProviderUnavailable

from .helpers import make_request, started_engine


@pytest.fixture(scope="module")
def small_queue_engine() -> Iterator[Any]:
    with started_engine(max_batch_size=1, batch_window_ms=0.0, max_queue_images=2) as engine:
        yield engine


async def test_a_full_queue_is_reported_and_refused(small_queue_engine: Any) -> None:
    engine = small_queue_engine
    running = asyncio.Event()
    blocker = make_request("keeps the worker busy", size=512, steps=40, batching=False)
    blocker_task = asyncio.create_task(
        engine.generate(blocker, on_progress=lambda _event: running.set())
    )
    await asyncio.wait_for(running.wait(), 30)
    assert engine.status()["queue_full"] is False
    queued = asyncio.create_task(engine.generate(make_request("waits", n=2, batching=False)))
    deadline = asyncio.get_running_loop().time() + 10
    while engine.status()["queued_images"] < 2:
        assert asyncio.get_running_loop().time() < deadline, "the request was never queued"
        await asyncio.sleep(0.001)
    status = engine.status()
    assert status["queue_full"] is True and status["max_queue_images"] == 2
    with pytest.raises(ProviderUnavailable) as caught:
        await engine.generate(make_request("one too many"))
    assert caught.value.status == 429  # busy, not down: it must not open the circuit
    assert "queue is full" in caught.value.message
    for task in (queued, blocker_task):
        task.cancel()
    await asyncio.gather(queued, blocker_task, return_exceptions=True)
    assert engine.status()["queue_full"] is False
