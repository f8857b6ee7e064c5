"""Try the planned providers of a request in turn within one deadline (SPEC §4).

`Router.route` is the loop: probe what may recover, try each provider that `selection.py`
plans, record every attempt, fall back on a provider's failure, stop at the deadline, and
stamp the serving provider on the result. docs/routing.md walks through it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from pixelrouter.catalog import image_tokens
from pixelrouter.errors import (
    PixelrouterError,
    ProviderError,
    RequestTimeout,
    RoutingFailed,
    ServiceUnavailable,
    UpstreamFailed,
    provider_caused,
)
from pixelrouter.providers.base import Provider
from pixelrouter.routing.health import CircuitState, HealthConfig, HealthRegistry
from pixelrouter.routing.selection import Selection, no_endpoint
from pixelrouter.types import (
    ImageRequest,
    ImageResult,
    ProgressEvent,
    ProviderAttempt,
)

log = logging.getLogger(__name__)

PROBE_GRACE_S = 0.1


class Router(Selection):
    """Providers in the order SPEC §4 asks (`Selection`); the fallback loop lives in `route`."""

    def __init__(
        self,
        providers: Sequence[Provider],
        *,
        deadline_s: float = 600.0,
        rng: random.Random | None = None,
        health: HealthRegistry | HealthConfig | None = None,
        attempt_timeout_s: float | None = None,
        probe_timeout_s: float = 1.0,
        status_interval_s: float = 1.0,
    ) -> None:
        super().__init__(
            providers,
            rng=rng or random.Random(),
            health=health if isinstance(health, HealthRegistry) else HealthRegistry(health),
        )
        self.deadline_s = deadline_s
        # Each provider has its own connect / first-byte / total timeouts; this optional cap
        # turns a slower attempt into that provider's timeout (504) and moves on.
        self.attempt_timeout_s = attempt_timeout_s
        self.probe_timeout_s = probe_timeout_s  # also bounds how long routing waits on probes
        self.status_interval_s = status_interval_s
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._polls: dict[str, asyncio.Task[None]] = {}
        self._polled_at: dict[str, float] = {}

    # ------------------------------------------------------------------ health upkeep

    async def _prepare(self, providers: list[Provider]) -> None:
        """Probe the half-open circuits and refresh the stale queue figures, concurrently,
        waiting at most `probe_timeout_s`: a slow probe never holds a request up for long."""
        now = self.health.clock()
        pending: list[asyncio.Task[None]] = []
        for provider in providers:
            slug = provider.info.slug
            if self.health.of(slug).probe_due(now):
                pending.append(self._shared(self._probes, slug, self._probe(provider)))
            polled = self._polled_at.get(slug)
            if polled is None or now - polled >= self.status_interval_s:
                self._polled_at[slug] = now
                pending.append(self._shared(self._polls, slug, self._poll(provider)))
        if pending:
            # asyncio.wait neither cancels them on timeout nor when this request is cancelled:
            # other requests may be waiting on the same probe.
            # Each task is bounded by probe_timeout_s itself; the grace lets it record that.
            await asyncio.wait(pending, timeout=self.probe_timeout_s + PROBE_GRACE_S)

    @staticmethod
    def _shared(
        tasks: dict[str, asyncio.Task[None]], slug: str, work: Coroutine[Any, Any, None]
    ) -> asyncio.Task[None]:
        """One in-flight task per provider; a second request waits on the same one."""
        task = tasks.get(slug)
        if task is not None and not task.done():
            work.close()
            return task
        task = asyncio.ensure_future(work)
        tasks[slug] = task

        def forget(done: asyncio.Task[None]) -> None:
            if tasks.get(slug) is done:
                del tasks[slug]

        task.add_done_callback(forget)
        return task

    async def _probe(self, provider: Provider) -> None:
        """The half-open test: the provider's cheap readiness call, never a paid generation."""
        slug = provider.info.slug
        try:
            ok = bool(await asyncio.wait_for(provider.probe(), self.probe_timeout_s))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            ok = False
        except Exception:
            log.exception("probe of provider %s failed", slug)
            ok = False
        health = self.health.of(slug)
        if health.probe_due():  # a real success may have closed it meanwhile
            health.record_probe(ok)
            log.info("circuit of provider %s: probe %s", slug, "passed" if ok else "failed")

    async def _poll(self, provider: Provider) -> None:
        try:
            await asyncio.wait_for(provider.refresh_status(), self.probe_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the provider's status() says what it last knew
            log.debug("status poll of provider %s failed: %r", provider.info.slug, exc)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per provider slug: circuit, counters, live latency and throughput."""
        return {p.info.slug: self.health.of(p.info.slug).snapshot() for p in self.providers}

    def ready(self) -> tuple[bool, str]:
        """Ready while one provider is ready and its circuit is not open: a gateway whose every
        provider is failing says so, and a load balancer sends its traffic elsewhere."""
        reasons = []
        for provider in self.providers:
            ok, reason = provider.readiness()
            health = self.health.of(provider.info.slug)
            if ok and health.state() is not CircuitState.OPEN:
                return True, f"{provider.info.display_name} is ready"
            if ok:
                reason = (
                    f"paused after {health.consecutive_failures} failures in a row "
                    f"(last: {health.last_error})"
                )
            reasons.append(f"{provider.info.display_name}: {reason}")
        if not reasons:
            return False, "no provider is configured"
        return False, "; ".join(reasons)

    # ------------------------------------------------------------------ the loop

    async def route(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        attempts: list[ProviderAttempt] = []
        errors: list[dict[str, object]] = []
        retry_after: list[float] = []  # what failed providers asked for
        held_back: dict[str, Provider] = {}  # allowed by the preferences, but not healthy
        considered = False
        deadline = time.monotonic() + self.deadline_s

        def failed(
            provider: Provider,
            started: float,
            status: int,
            message: str,
            retry_after_s: float | None = None,
        ) -> None:
            latency = int((time.monotonic() - started) * 1000)
            name = provider.info.display_name
            attempts.append(
                ProviderAttempt(name, status, latency, message, provider.info.slug, model)
            )
            errors.append({"provider": name, "status": status, "message": message})
            self.health.of(provider.info.slug).record_failure(
                status, message, retry_after_s=retry_after_s
            )
            if retry_after_s:
                retry_after.append(retry_after_s)
            log.info("provider %s failed (%d): %s", provider.info.slug, status, message)

        def timed_out() -> RoutingFailed:
            return RoutingFailed(
                RequestTimeout(
                    f"The request did not finish within {self.deadline_s:.0f} s.",
                    metadata={"provider_errors": errors},
                ),
                attempts,
            )

        for model in (request.model, *request.fallback_models):
            eligible = self.eligible(request, model)
            if not eligible and request.loras:
                # Which adapters a worker holds is learnt by polling it: poll those not yet
                # (or not lately) asked before deciding that none holds them.
                await self._prepare(self.serves(model))
                eligible = self.eligible(request, model)
            if not eligible:
                continue
            await self._prepare(eligible)
            # A first poll may have just shown what a worker takes (a fused one: one adapter set).
            eligible = [
                p for p in eligible if self._can_express(p, self.attempt_request(request, model, p))
            ]
            if not eligible:
                continue
            considered = True
            planned = self._plan(request, eligible)
            now = self.health.clock()
            held_back.update(
                (p.info.slug, p)
                for p in eligible
                if not self.health.of(p.info.slug).accepts_work(now)
            )
            for provider in planned:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise timed_out()
                limit = remaining
                if self.attempt_timeout_s is not None:
                    limit = min(remaining, self.attempt_timeout_s)
                attempt_request = self.attempt_request(request, model, provider)
                started = time.monotonic()
                scope = asyncio.timeout(limit)
                try:
                    async with scope:
                        result = await provider.generate(attempt_request, on_progress)
                except asyncio.CancelledError:
                    raise  # the client went away: no fallback, no verdict on the provider
                except ProviderError as exc:
                    failed(provider, started, exc.status, exc.message, exc.retry_after_s)
                    continue
                except PixelrouterError as exc:
                    if not provider_caused(exc):
                        # The client's fault (4xx): another provider would refuse it too.
                        name = provider.info.display_name
                        latency = int((time.monotonic() - started) * 1000)
                        attempts.append(
                            ProviderAttempt(
                                name, exc.status, latency, exc.message, provider.info.slug, model
                            )
                        )
                        self.health.of(provider.info.slug).record_client_error()
                        raise RoutingFailed(exc, attempts) from exc
                    failed(provider, started, exc.status, exc.message, _retry_after(exc))
                    continue
                except TimeoutError:
                    if scope.expired() and limit == remaining:
                        failed(provider, started, 408, "timed out")
                        raise timed_out() from None
                    # The attempt's own cap, or the provider's own timeout: its failure.
                    why = f"took longer than {limit:g} s" if scope.expired() else "timed out"
                    failed(provider, started, 504, why)
                    continue
                except Exception:
                    # A bug in one provider's code must not lose the request: log it with an
                    # id, count it as that provider's failure and try the next one.
                    error_id = secrets.token_hex(8)
                    log.exception("provider %s failed (error id %s)", provider.info.slug, error_id)
                    failed(
                        provider, started, 500, f"internal error in the provider (id {error_id})"
                    )
                    continue
                if not result.images:
                    failed(provider, started, 502, "the provider returned no image")
                    continue
                seconds = time.monotonic() - started
                self.health.of(provider.info.slug).record_success(
                    seconds=seconds,
                    images=len(result.images),
                    image_tokens=sum(image_tokens(im.width, im.height) for im in result.images),
                )
                attempts.append(
                    ProviderAttempt(
                        provider.info.display_name,
                        200,
                        int(seconds * 1000),
                        provider_slug=provider.info.slug,
                        model=model,
                    )
                )
                # The provider that served it names it, whatever the provider wrote itself.
                return dataclasses.replace(
                    result,
                    provider_slug=provider.info.slug,
                    provider_name=provider.info.display_name,
                    attempts=tuple(attempts),
                )
        raise RoutingFailed(
            self._failure(request, considered, attempts, errors, retry_after, held_back),
            attempts,
        )

    def _failure(
        self,
        request: ImageRequest,
        considered: bool,
        attempts: list[ProviderAttempt],
        errors: list[dict[str, object]],
        retry_after: list[float],
        held_back: dict[str, Provider],
    ) -> PixelrouterError:
        """The error when no attempt succeeded: 404 when the request's preferences leave no
        provider at all (as OpenRouter answers "no endpoints found", and no client retries
        it), 503 when nothing could take it now (no provider configured, all held back, all
        unavailable or rate limited), else 502."""
        if not considered:
            return self.unserved(request)
        if not attempts and held_back:
            return self._held_back(held_back)
        if not attempts:  # `order` with fallbacks off named no provider that serves the model
            return no_endpoint(request)
        headers = {}
        if retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(min(retry_after))))
        if all(a.status in (429, 503) for a in attempts):
            last = attempts[-1].error or "No provider can take this request now."
            return ServiceUnavailable(last, metadata={"provider_errors": errors}, headers=headers)
        return UpstreamFailed(
            "Every provider failed for this request.",
            metadata={"provider_errors": errors},
            headers=headers,
        )

    def _held_back(self, held_back: dict[str, Provider]) -> ServiceUnavailable:
        """Every allowed provider is behind an open circuit or its own Retry-After."""
        now = self.health.clock()
        reasons = []
        waits = []
        for provider in held_back.values():
            health = self.health.of(provider.info.slug)
            wait = health.wait_s(now)
            waits.append(wait)
            if health.state(now) is not CircuitState.CLOSED:
                why = (
                    f"paused after {health.consecutive_failures} failures in a row"
                    f" (last: {health.last_error})"
                )
            else:
                why = f"asked to wait {math.ceil(wait)} s (last: {health.last_error})"
            reasons.append(f"{provider.info.display_name} is {why}")
        retry = max(1, math.ceil(min(waits, default=1.0)))
        return ServiceUnavailable(
            "No provider can take this request now: "
            + "; ".join(reasons)
            + f". Try again in {retry} s.",
            metadata={"retry_after": retry},
            headers={"Retry-After": str(retry)},
        )


def _retry_after(exc: PixelrouterError) -> float | None:
    value = getattr(exc, "retry_after_s", None) or exc.metadata.get("retry_after")
    return float(value) if isinstance(value, int | float) and value > 0 else None
