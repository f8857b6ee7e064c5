"""A request's `provider` preferences (SPEC §4) into `ProviderPrefs`, and the parameters a
request gives that no provider acts on: shared by the three request shapes (`wire.py`)."""

from __future__ import annotations

import math
from typing import Any, Literal, cast

from pixelrouter.catalog import usd_to_micro
from pixelrouter.errors import InvalidRequest
from pixelrouter.types import ProviderPrefs

from .schemas import MAX_GUIDANCE, MAX_STEPS, PercentileCutoffs, ProviderPreferences

SortBy = Literal["price", "throughput", "latency"]
SORTS = ("price", "throughput", "latency", "exacto")
# `provider.options` values the providers act on; other keys are dropped, as OpenRouter does.
PASSTHROUGH_OPTIONS = ("steps", "guidance", "batching", "priority")


def printable(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Names cut and made printable: they are stored on the generation record."""
    return tuple(name[:64].encode("utf-8", "replace").decode() for name in names[:32])


def check_steps(steps: int | None) -> int | None:
    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise InvalidRequest(f"steps must be between 1 and {MAX_STEPS}; got {steps}.")
    return steps


def check_guidance(guidance: float | None) -> float | None:
    if guidance is not None and not 0.0 <= guidance <= MAX_GUIDANCE:
        raise InvalidRequest(f"guidance must be between 0 and {MAX_GUIDANCE}; got {guidance}.")
    return guidance


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InvalidRequest(f"{name} must be an integer.")
    return int(value)


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number.")
    return float(value)


def _usd_to_micro(value: float | str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        usd = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"provider.max_price.{name} must be a number of USD.") from exc
    if not 0 <= usd < 1e9:
        raise InvalidRequest(f"provider.max_price.{name} must be between 0 and 1e9 USD.")
    return usd_to_micro(usd)


def provider_prefs(p: ProviderPreferences | None) -> ProviderPrefs:
    if p is None:
        return ProviderPrefs()
    sort = p.sort.get("by") if isinstance(p.sort, dict) else p.sort
    if sort not in (None, *SORTS):
        raise InvalidRequest(f"provider.sort must be one of {', '.join(SORTS)}.")
    options: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
    for slug, values in (p.options or {}).items():
        if not isinstance(values, dict):
            raise InvalidRequest(f"provider.options.{slug} must be an object.")
        allowed: dict[str, Any] = {}
        for key, value in values.items():
            if key == "steps":
                allowed[key] = check_steps(_as_int(value, "steps"))
            elif key == "guidance":
                allowed[key] = check_guidance(_as_float(value, "guidance"))
            elif key == "batching":
                allowed[key] = bool(value)
            elif key == "priority":
                if value not in ("interactive", "batch"):
                    raise InvalidRequest(
                        f"provider.options.{slug}.priority must be 'interactive' or 'batch'."
                    )
                allowed[key] = value
        options.append((slug, tuple(sorted(allowed.items()))))
    return ProviderPrefs(
        order=tuple(p.order or ()),
        allow_fallbacks=True if p.allow_fallbacks is None else p.allow_fallbacks,
        require_parameters=bool(p.require_parameters),
        only=tuple(p.only or ()),
        ignore=tuple(p.ignore or ()),
        # "exacto" ranks by tool-calling quality, which image providers do not have: the
        # default order serves it (and the generation lists provider.sort as ignored).
        sort=cast(SortBy | None, None if sort == "exacto" else sort),
        max_price_image_micro=_usd_to_micro(p.max_price.image, "image") if p.max_price else None,
        max_price_request_micro=(
            _usd_to_micro(p.max_price.request, "request") if p.max_price else None
        ),
        data_collection=p.data_collection or "allow",
        options=tuple(options),
        quantizations=tuple(q.strip().lower() for q in p.quantizations or () if q.strip()),
        zdr=bool(p.zdr),
        preferred_max_latency_s=_cutoffs(p.preferred_max_latency, "preferred_max_latency"),
        preferred_min_throughput=_cutoffs(p.preferred_min_throughput, "preferred_min_throughput"),
    )


def _cutoffs(value: float | PercentileCutoffs | None, name: str) -> tuple[tuple[str, float], ...]:
    """A number (the p50 cut-off) or `{p50, p75, p90, p99}`, each a finite number >= 0."""
    if value is None:
        return ()
    pairs = (
        [("p50", value)]
        if isinstance(value, int | float)
        else [(k, v) for k, v in value.model_dump(include={"p50", "p75", "p90", "p99"}).items()]
    )
    cutoffs = []
    for percentile, cutoff in pairs:
        if cutoff is None:
            continue
        if not math.isfinite(cutoff) or cutoff < 0:
            raise InvalidRequest(f"provider.{name}.{percentile} must be a number of at least 0.")
        cutoffs.append((percentile, float(cutoff)))
    return tuple(cutoffs)


def ignored_provider_fields(p: ProviderPreferences | None) -> tuple[str, ...]:
    """`provider` fields accepted but not acted on, for the generation record."""
    if p is None:
        return ()
    names = [f"provider.{name}" for name in sorted(p.model_extra or {})]
    sort = p.sort.get("by") if isinstance(p.sort, dict) else p.sort
    if sort == "exacto":
        names.append("provider.sort")
    if isinstance(p.sort, dict) and p.sort.get("partition") not in (None, "model"):
        names.append("provider.sort.partition")
    for slug, values in (p.options or {}).items():
        if isinstance(values, dict):
            names += [
                f"provider.options.{slug}.{k}" for k in values if k not in PASSTHROUGH_OPTIONS
            ]
    return tuple(names)


def with_ignored_provider_fields(
    ignored: tuple[str, ...], p: ProviderPreferences | None
) -> tuple[str, ...]:
    """Routing preferences not acted on are listed too, but never refuse a request under
    `require_parameters` (which is about the model's parameters)."""
    return printable([*ignored, *ignored_provider_fields(p)])


def require_parameters(prefs: ProviderPrefs, ignored: tuple[str, ...]) -> None:
    if prefs.require_parameters and ignored:
        raise InvalidRequest(
            "No provider supports every parameter of this request "
            f"(provider.require_parameters is true): {', '.join(ignored)}.",
            metadata={"unsupported_parameters": list(ignored)},
        )
