"""Which providers may take a request (SPEC §4), in order: the selection half of routing.

`Selection.eligible` filters the providers of one model by the request's preferences (only,
ignore, data_collection, zdr, quantizations, max_price, require_parameters) and by what each
can express (its size, references, adapters; a fused worker its one adapter set); `plan` puts
those whose health lets them take work in `order.py`'s order. No I/O, so tests call `plan`
directly. When none is left, `unserved` is the 404 (or 503) that says why. `router.py` runs
the attempts.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence

from pixelrouter.catalog import image_price
from pixelrouter.errors import NotFound, PixelrouterError, ServiceUnavailable
from pixelrouter.providers.base import Provider
from pixelrouter.routing.health import HealthRegistry
from pixelrouter.routing.order import (
    Candidate,
    beyond_preferences,
    live_status,
    order_candidates,
    wait_s,
)
from pixelrouter.types import ImageRequest

# The router's log, where operators already look for a provider's failures.
log = logging.getLogger("pixelrouter.routing.router")


def apply_provider_options(request: ImageRequest, slug: str) -> ImageRequest:
    """`provider.options` passthrough (steps, guidance, batching, priority) for one provider:
    the options under the model's author (`black-forest-labs`, which the SDKs let through)
    apply to every provider of the model, and those under the provider's own slug win over
    them. A request can lower its own priority to "batch", never raise a batch item's."""
    author = request.model.split("/", 1)[0]
    merged: dict[str, float | int | bool | str] = {}
    for wanted in (author, slug):
        for option_slug, values in request.prefs.options:
            if option_slug == wanted:
                merged.update(values)
    if not merged:
        return request
    return dataclasses.replace(
        request,
        steps=int(merged["steps"]) if "steps" in merged else request.steps,
        guidance=float(merged["guidance"]) if "guidance" in merged else request.guidance,
        batching=bool(merged.get("batching", request.batching)),
        priority="batch" if merged.get("priority") == "batch" else request.priority,
    )


def used_parameters(request: ImageRequest) -> tuple[str, ...]:
    """The request parameters a provider must support under `require_parameters` (the size is
    not listed: every provider takes one)."""
    used = []
    if request.seed_given:
        used.append("seed")
    if request.n > 1:
        used.append("n")
    if request.steps is not None:
        used.append("steps")
    if request.guidance is not None:
        used.append("guidance")
    if request.references:
        used.append("input_references")
    if request.output_format != "png":
        used.append("output_format")
    if request.output_compression is not None:
        used.append("output_compression")
    return tuple(used)


class Selection:
    """The providers a router holds, and which of them may take a request, in order."""

    def __init__(
        self, providers: Sequence[Provider], *, rng: random.Random, health: HealthRegistry
    ) -> None:
        self.providers = list(providers)
        self.rng = rng
        self.health = health

    def serves(self, model: str) -> list[Provider]:
        return [p for p in self.providers if model in p.info.models]

    def eligible(self, request: ImageRequest, model: str) -> list[Provider]:
        """The providers of `model` that the request's preferences allow, whatever their
        health: only, ignore, data_collection, max_price, require_parameters, supports()."""
        prefs = request.prefs
        chosen = []
        for provider in self.serves(model):
            info = provider.info
            if prefs.only and info.slug not in prefs.only:
                continue
            if info.slug in prefs.ignore:
                continue
            if prefs.data_collection == "deny" and info.data_collection != "deny":
                continue
            if prefs.zdr and not info.zdr:
                continue
            if prefs.quantizations and (info.quantization or "unknown") not in prefs.quantizations:
                continue
            price = image_price(info.price, request.width, request.height)
            if prefs.max_price_image_micro is not None and price > prefs.max_price_image_micro:
                continue
            if (
                prefs.max_price_request_micro is not None
                and request.n * price > prefs.max_price_request_micro
            ):
                continue
            attempt = self.attempt_request(request, model, provider)
            if not self._can_express(provider, attempt):
                continue  # it would make (and bill) something other than what was asked
            if prefs.require_parameters and not _declares(info.supported_parameters, attempt):
                continue
            chosen.append(provider)
        return chosen

    def plan(self, request: ImageRequest, model: str, now: float | None = None) -> list[Provider]:
        """The providers to try for `model`, in order. No I/O: health and live status only."""
        return self._plan(request, self.eligible(request, model), now)

    def _plan(
        self, request: ImageRequest, eligible: list[Provider], now: float | None = None
    ) -> list[Provider]:
        now = self.health.clock() if now is None else now
        prefs = request.prefs
        candidates = []
        for provider in eligible:
            health = self.health.of(provider.info.slug)
            if not health.accepts_work(now):
                continue  # open circuit (or awaiting its probe), or its Retry-After pending
            status = live_status(provider)
            beyond = False
            if prefs.preferred_max_latency_s or prefs.preferred_min_throughput:
                beyond = beyond_preferences(prefs, *health.percentiles(now))
            candidates.append(
                Candidate(
                    provider=provider,
                    price=image_price(provider.info.price, request.width, request.height),
                    queue_full=status.queue_full,
                    wait_s=wait_s(status),
                    demoted=health.failed_recently(now),
                    latency_s=health.latency_s,
                    throughput=health.throughput,
                    beyond_preferences=beyond,
                )
            )
        return [c.provider for c in order_candidates(candidates, request, self.rng)]

    @staticmethod
    def attempt_request(request: ImageRequest, model: str, provider: Provider) -> ImageRequest:
        """The request as this provider gets it: the model being tried, its own options."""
        return apply_provider_options(dataclasses.replace(request, model=model), provider.info.slug)

    @staticmethod
    def _can_express(provider: Provider, request: ImageRequest) -> bool:
        try:
            return bool(provider.supports(request))
        except Exception:
            log.exception("supports() of provider %s failed", provider.info.slug)
            return False

    def unserved(self, request: ImageRequest) -> PixelrouterError:
        """The error when no provider of the request's models was left to try: 404 when its
        adapters or preferences leave none (as OpenRouter answers "no endpoints found", and no
        client retries it), 503 when no provider serves the model at all."""
        if request.loras and not self._lora_holders(request):
            names = ", ".join(choice.name for choice in request.loras)
            return NotFound(
                f"No provider of {request.model} holds the LoRA adapter(s) {names}: "
                "none of this server's providers has them loaded and ready.",
                metadata={
                    "reason": "no_endpoints_found",
                    "loras": [choice.name for choice in request.loras],
                },
            )
        if any(self.serves(m) for m in (request.model, *request.fallback_models)):
            return no_endpoint(request)
        return ServiceUnavailable(f"No provider serves {request.model} on this server.")

    def _lora_holders(self, request: ImageRequest) -> list[Provider]:
        """The providers of the request's models that hold all its adapters, whatever the
        request's preferences."""
        holders = []
        for model in (request.model, *request.fallback_models):
            for provider in self.serves(model):
                attempt = dataclasses.replace(request, model=model, references=())
                if self._can_express(provider, attempt):
                    holders.append(provider)
        return holders


def no_endpoint(request: ImageRequest) -> NotFound:
    """No provider of the model is left by the request's preferences and what it asks."""
    return NotFound(
        f"No provider of {request.model} matches this request's provider preferences "
        "(only, ignore, order without fallbacks, max_price, data_collection, zdr, "
        "quantizations, require_parameters) or can make its size and references.",
        metadata={"reason": "no_endpoints_found"},
    )


def _declares(supported: tuple[str, ...], request: ImageRequest) -> bool:
    """An empty declaration means "not declared": such a provider is not filtered out."""
    return not supported or all(p in supported for p in used_parameters(request))
