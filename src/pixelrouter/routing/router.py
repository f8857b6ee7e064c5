"""Filter and order the providers of a request, then try them in turn within one deadline."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence

from pixelrouter.catalog import image_price
from pixelrouter.errors import (
    PixelrouterError,
    RequestTimeout,
    ServiceUnavailable,
    UpstreamFailed,
)
from pixelrouter.providers.base import Provider, ProviderError
from pixelrouter.types import ImageRequest, ImageResult, ProgressEvent, ProviderAttempt

log = logging.getLogger(__name__)


class RoutingFailed(PixelrouterError):
    """Every candidate failed; carries the attempts so the generation record lists them."""

    def __init__(self, error: PixelrouterError, attempts: list[ProviderAttempt]) -> None:
        super().__init__(error.message, metadata=error.metadata, headers=error.headers)
        self.status = error.status
        self.error_type = error.error_type
        self.attempts = attempts
        self.cause = error


def apply_provider_options(request: ImageRequest, slug: str) -> ImageRequest:
    """`provider.options.<slug>` passthrough (steps, guidance, batching) for one provider."""
    for option_slug, values in request.prefs.options:
        if option_slug == slug:
            options = dict(values)
            return dataclasses.replace(
                request,
                steps=int(options["steps"]) if "steps" in options else request.steps,
                guidance=(
                    float(options["guidance"]) if "guidance" in options else request.guidance
                ),
                batching=bool(options.get("batching", request.batching)),
            )
    return request


class Router:
    """Providers in the order SPEC §4 asks; the fallback loop lives in `route`."""

    def __init__(self, providers: Sequence[Provider], *, deadline_s: float = 600.0) -> None:
        self.providers = list(providers)
        self.deadline_s = deadline_s

    def serves(self, model: str) -> list[Provider]:
        return [p for p in self.providers if model in p.info.models]

    def candidates(self, request: ImageRequest, model: str) -> list[Provider]:
        prefs = request.prefs
        chosen = self.serves(model)
        if prefs.only:
            chosen = [p for p in chosen if p.info.slug in prefs.only]
        if prefs.ignore:
            chosen = [p for p in chosen if p.info.slug not in prefs.ignore]
        if prefs.data_collection == "deny":
            chosen = [p for p in chosen if p.info.data_collection == "deny"]
        if prefs.max_price_image_micro is not None:
            chosen = [
                p
                for p in chosen
                if image_price(p.info.price, request.width, request.height)
                <= prefs.max_price_image_micro
            ]
        if prefs.max_price_request_micro is not None:
            chosen = [
                p
                for p in chosen
                if request.n * image_price(p.info.price, request.width, request.height)
                <= prefs.max_price_request_micro
            ]

        def price_key(p: Provider) -> int:
            return image_price(p.info.price, request.width, request.height)

        if prefs.order:
            ordered = [p for slug in prefs.order for p in chosen if p.info.slug == slug]
            rest = sorted((p for p in chosen if p.info.slug not in prefs.order), key=price_key)
            chosen = ordered + rest
        else:
            chosen = sorted(chosen, key=price_key)
        if not prefs.allow_fallbacks:
            chosen = chosen[:1]
        return chosen

    def ready(self) -> tuple[bool, str]:
        reasons = []
        for provider in self.providers:
            ok, reason = provider.readiness()
            if ok:
                return True, f"{provider.info.display_name} is ready"
            reasons.append(f"{provider.info.display_name}: {reason}")
        if not reasons:
            return False, "no provider is configured"
        return False, "; ".join(reasons)

    async def route(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        attempts: list[ProviderAttempt] = []
        errors: list[dict[str, object]] = []
        deadline = time.monotonic() + self.deadline_s
        last_unavailable: ProviderError | None = None

        def failed(provider: Provider, started: float, status: int, message: str) -> None:
            latency = int((time.monotonic() - started) * 1000)
            name = provider.info.display_name
            attempts.append(ProviderAttempt(name, status, latency, message))
            errors.append({"provider": name, "status": status, "message": message})

        for model in (request.model, *request.fallback_models):
            for provider in self.candidates(request, model):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                attempt_request = apply_provider_options(
                    dataclasses.replace(request, model=model), provider.info.slug
                )
                started = time.monotonic()
                try:
                    result = await asyncio.wait_for(
                        provider.generate(attempt_request, on_progress), timeout=remaining
                    )
                except ProviderError as exc:
                    failed(provider, started, exc.status, exc.message)
                    if exc.status == 503:
                        last_unavailable = exc
                    if not request.prefs.allow_fallbacks:
                        break
                    continue
                except (PixelrouterError, asyncio.CancelledError):
                    raise  # the client's fault (4xx) or the client went away: no fallback
                except TimeoutError:
                    failed(provider, started, 408, "timed out")
                    raise RoutingFailed(
                        RequestTimeout(
                            f"The request did not finish within {self.deadline_s:.0f} s.",
                            metadata={"provider_errors": errors},
                        ),
                        attempts,
                    ) from None
                except Exception:
                    # A bug in one provider's code must not lose the request: log it with an
                    # id, count it as that provider's failure and try the next one.
                    error_id = secrets.token_hex(8)
                    log.exception("provider %s failed (error id %s)", provider.info.slug, error_id)
                    failed(
                        provider, started, 500, f"internal error in the provider (id {error_id})"
                    )
                    if not request.prefs.allow_fallbacks:
                        break
                    continue
                latency = int((time.monotonic() - started) * 1000)
                attempts.append(ProviderAttempt(provider.info.display_name, 200, latency))
                result.attempts = attempts
                return result
        if not attempts:
            raise RoutingFailed(
                ServiceUnavailable(
                    f"No provider is available for {request.model} with the given "
                    "provider preferences.",
                ),
                attempts,
            )
        if last_unavailable is not None and all(a.status == 503 for a in attempts):
            raise RoutingFailed(
                ServiceUnavailable(last_unavailable.message, metadata={"provider_errors": errors}),
                attempts,
            )
        raise RoutingFailed(
            UpstreamFailed(
                "Every provider failed for this request.",
                metadata={"provider_errors": errors},
            ),
            attempts,
        )
