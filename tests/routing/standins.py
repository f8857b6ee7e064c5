"""Stand-in providers for routing tests: `ProviderBase` classes implementing the protocol.

They stand in for upstreams (a price, a live queue, a scripted list of outcomes); the router
under test is the real one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from pixelrouter.catalog import KLEIN_4B, Price
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.routing.health import HealthConfig, HealthRegistry
from pixelrouter.routing.router import Router
from pixelrouter.types import (
    GeneratedImage,
    ImageRequest,
    ImageResult,
    ProgressEvent,
    ProviderPrefs,
)

MODEL = KLEIN_4B.id
OTHER_MODEL = "example/other-model"

Outcome = Exception | Callable[[], Any] | None  # raise it, await it, or succeed


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StandIn(ProviderBase):
    """An upstream with a price, live queue figures and scripted outcomes (default: success)."""

    def __init__(
        self,
        slug: str,
        price: int = 10_000,
        *,
        outcomes: list[Outcome] | None = None,
        models: tuple[str, ...] = (MODEL,),
        data_collection: str = "deny",
        supported_parameters: tuple[str, ...] = (),
        live: dict[str, Any] | None = None,
        probe_ok: bool = True,
    ) -> None:
        self.outcomes = list(outcomes or [])
        self.calls = 0
        self.requests: list[ImageRequest] = []
        self.probes = 0
        self.probe_ok = probe_ok
        self.live = dict(live or {})
        self.info = ProviderInfo(
            slug=slug,
            display_name=f"Stand-in {slug}",
            models=models,
            price=Price(first_mp=price, extra_mp=1_000),
            kind="openrouter",
            data_collection=data_collection,
            supported_parameters=supported_parameters,
        )

    def fail_always(self, error: Exception) -> StandIn:
        self.outcomes = [error] * 1_000
        return self

    async def generate(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        self.calls += 1
        self.requests.append(request)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is not None:
            await outcome()
        return ImageResult(
            request_id=request.id,
            model=request.model,
            provider_slug=self.info.slug,
            provider_name=self.info.display_name,
            images=(GeneratedImage(b"\x89PNG", "image/png", request.width, request.height, 0, 0),),
            generation_time_ms=1,
            prompt_tokens=1,
        )

    def readiness(self) -> tuple[bool, str]:
        return True, "ready"

    def status(self) -> ProviderStatus:
        return ProviderStatus(**self.live)

    async def probe(self) -> bool:
        self.probes += 1
        return self.probe_ok

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return None

    async def aclose(self) -> None:
        return None


def request(
    *,
    model: str = MODEL,
    fallback_models: tuple[str, ...] = (),
    width: int = 1024,
    height: int = 1024,
    **prefs: Any,
) -> ImageRequest:
    fields = {k: prefs.pop(k) for k in list(prefs) if k in ImageRequest.__dataclass_fields__}
    return ImageRequest(
        id=f"gen-{uuid.uuid4().hex[:12]}",
        model=model,
        prompt="a lighthouse at dusk",
        width=width,
        height=height,
        fallback_models=fallback_models,
        prefs=ProviderPrefs(**prefs),
        **fields,
    )


def make_router(
    providers: list[Any],
    *,
    seed: int = 7,
    clock: FakeClock | None = None,
    config: HealthConfig | None = None,
    **kwargs: Any,
) -> Router:
    import random

    health = HealthRegistry(config, clock=clock or FakeClock())
    return Router(providers, rng=random.Random(seed), health=health, **kwargs)


def slugs(providers: list[Any]) -> list[str]:
    return [p.info.slug for p in providers]


async def never() -> None:
    """An upstream that never answers."""
    await asyncio.Event().wait()
