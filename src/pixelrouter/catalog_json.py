"""The JSON of models, providers and endpoints (SPEC §3), written once: the catalogue and
statistics routes answer with it and the web pages embed it, so a page and the API agree.

Pure shapes from the catalogue, the providers and their statistics; no HTTP here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pixelrouter.catalog import (
    ASPECT_RATIOS,
    PPM,
    TIERS,
    ModelEntry,
    Price,
    micro_to_usd,
    per_token_price_string,
)
from pixelrouter.providers.base import Provider
from pixelrouter.routing.health import CircuitState
from pixelrouter.stats import ProviderStats, UptimeHour, endpoint_status

if TYPE_CHECKING:
    from pixelrouter.routing.router import Router

NO_TOOL_CHOICE = {"auto": False, "function": False, "none": False, "required": False}
STATS_FIELDS = (
    "uptime_last_5m",
    "uptime_last_30m",
    "uptime_last_1d",
    "latency_last_30m",
    "throughput_last_30m",
)
NO_FIGURES: dict[str, Any] = {
    **dict.fromkeys(STATS_FIELDS),
    "perf_last_30m_by_workload": {
        "image_generation": {"latency": None, "request_count": 0, "throughput": None}
    },
}


def token_pricing(price: Price, batch_discount_ppm: int = 0) -> dict[str, str]:
    """SPEC §1: USD per token at 4096 image tokens per megapixel; with `batch_discount`, the
    share a batch's images cost less (the price's own, else the server's default)."""
    pricing = {
        "prompt": per_token_price_string(price.extra_mp),
        "completion": per_token_price_string(price.extra_mp),
        "image_output": per_token_price_string(price.first_mp),
        "request": "0",
        "image": per_token_price_string(price.input_mp) if price.input_mp else "0",
    }
    ppm = batch_discount_ppm if price.batch_discount_ppm is None else price.batch_discount_ppm
    if ppm:
        pricing["batch_discount"] = str(Decimal(ppm) / Decimal(PPM))
    return pricing


def megapixel_pricing(price: Price) -> list[dict[str, Any]]:
    return [
        {"billable": "output_image", "unit": "megapixel", "cost_usd": micro_to_usd(price.first_mp)},
        {
            "billable": "output_image",
            "unit": "megapixel",
            "cost_usd": micro_to_usd(price.extra_mp),
            "variant": "additional",
        },
    ]


def architecture(entry: ModelEntry) -> dict[str, Any]:
    return {
        "modality": entry.modality,
        "input_modalities": list(entry.input_modalities),
        "output_modalities": list(entry.output_modalities),
        "tokenizer": entry.tokenizer,
        "instruct_type": None,
    }


def endpoints_url(entry: ModelEntry, images_api: bool = False) -> str:
    """A variant's endpoints are its base model's (the providers that serve the model)."""
    prefix = "/api/v1/images/models" if images_api else "/api/v1/models"
    return f"{prefix}/{entry.base_id or entry.id}/endpoints"


def model_json(entry: ModelEntry, batch_discount_ppm: int = 0) -> dict[str, Any]:
    return {
        "id": entry.id,
        "canonical_slug": entry.canonical_slug,
        "hugging_face_id": entry.hf_id,
        "name": entry.name,
        "created": entry.created,
        "description": entry.description,
        "context_length": entry.context_length,
        "architecture": architecture(entry),
        "pricing": token_pricing(entry.price, batch_discount_ppm),
        "top_provider": {
            "context_length": entry.context_length,
            "max_completion_tokens": None,
            "is_moderated": False,
        },
        "per_request_limits": None,
        "supported_parameters": list(entry.supported_parameters),
        "default_parameters": {"steps": entry.default_steps, "guidance": entry.default_guidance},
        "supported_voices": None,
        "links": {"details": endpoints_url(entry)},
        # What the OpenAI SDK's `Model` reads (`models.list` / `models.retrieve`).
        "object": "model",
        "owned_by": entry.author,
    }


def provider_json(provider: Provider) -> dict[str, Any]:
    """A provider in OpenRouter's `/providers` shape."""
    return {
        "name": provider.info.display_name,
        "slug": provider.info.slug,
        "privacy_policy_url": None,
        "terms_of_service_url": None,
        "status_page_url": None,
        "headquarters": None,
        "datacenters": None,
    }


def live_status(router: Router, provider: Provider, stats: ProviderStats | None) -> int:
    """SPEC §3.4 `status` from readiness, the circuit breaker and the statistics."""
    ready, _ = provider.readiness()
    circuit = router.health.of(provider.info.slug).state()
    return endpoint_status(
        stats,
        ready=ready,
        circuit_open=circuit is CircuitState.OPEN,
        circuit_half_open=circuit is CircuitState.HALF_OPEN,
    )


def endpoint_json(
    entry: ModelEntry,
    provider: Provider,
    stats: ProviderStats | None,
    status: int,
    batch_discount_ppm: int = 0,
) -> dict[str, Any]:
    info = provider.info
    figures = stats.json() if stats is not None else NO_FIGURES
    return {
        "name": f"{info.display_name} | {entry.id}",
        "model_id": entry.id,
        "model_name": entry.name,
        "provider_name": info.display_name,
        "tag": info.slug,
        "context_length": entry.context_length,
        "max_completion_tokens": None,
        "max_prompt_tokens": None,
        "pricing": token_pricing(info.price, batch_discount_ppm),
        "quantization": info.quantization,
        "service_tier": None,
        "status": status,
        "supported_parameters": list(info.supported_parameters or entry.supported_parameters),
        "supports_implicit_caching": False,
        "supports_tool_choice": NO_TOOL_CHOICE,
        "supports_diarization": False,
        "supports_image_reference": True,
        "native_tools": {},
        **figures,
    }


def model_endpoints_json(entry: ModelEntry, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    """A model with its endpoints (`endpoint_json` each)."""
    return {
        "id": entry.id,
        "name": entry.name,
        "created": entry.created,
        "description": entry.description,
        "architecture": architecture(entry),
        "endpoints": endpoints,
    }


def capability_descriptors(entry: ModelEntry) -> dict[str, dict[str, Any]]:
    return {
        "n": {"type": "range", "min": 1, "max": entry.max_images_per_request},
        "seed": {"type": "range", "min": 0, "max": 2**53},
        "size": {"type": "enum", "values": list(TIERS)},
        "resolution": {"type": "enum", "values": list(TIERS)},
        "aspect_ratio": {"type": "enum", "values": [*ASPECT_RATIOS, "auto"]},
        "output_format": {"type": "enum", "values": ["png", "jpeg", "webp"]},
        "output_compression": {"type": "range", "min": 0, "max": 100},
        "background": {"type": "enum", "values": ["auto", "opaque"]},
        "input_references": {"type": "range", "min": 0, "max": entry.max_reference_images},
    }


def image_model_json(entry: ModelEntry) -> dict[str, Any]:
    """A model in the Image API's listing."""
    return {
        "id": entry.id,
        "canonical_slug": entry.canonical_slug,
        "name": entry.name,
        "created": entry.created,
        "description": entry.description,
        "architecture": {
            "input_modalities": list(entry.input_modalities),
            "output_modalities": list(entry.output_modalities),
        },
        "endpoints": endpoints_url(entry, images_api=True),
        "pricing": megapixel_pricing(entry.price),
        "supported_parameters": capability_descriptors(entry),
        "supports_streaming": True,
    }


def image_endpoint_json(entry: ModelEntry, provider: Provider, status: int) -> dict[str, Any]:
    """One provider of a model in the Image API's endpoints listing."""
    return {
        "provider_name": provider.info.display_name,
        "provider_slug": provider.info.slug,
        "provider_tag": provider.info.slug,
        "status": status,
        "pricing": megapixel_pricing(provider.info.price),
        "supported_parameters": capability_descriptors(entry),
        "supports_streaming": True,
        "allowed_passthrough_parameters": ["steps", "guidance", "batching"],
    }


def provider_stats_json(
    router: Router, provider: Provider, stats: ProviderStats, hourly: list[UptimeHour]
) -> dict[str, Any]:
    """One provider of a model's statistics: live status, readiness and circuit, the
    windows' figures and outcome counts, and its uptime per hour."""
    ready, reason = provider.readiness()
    circuit = router.health.of(provider.info.slug).state()
    return {
        "provider_name": provider.info.display_name,
        "tag": provider.info.slug,
        "status": live_status(router, provider, stats),
        "ready": ready,
        "reason": reason,
        "circuit": circuit.value,
        **stats.json(),
        "samples_last_30m": stats.samples_last_30m,
        "outcomes": {
            window: {
                "successes": counts.successes,
                "errors": counts.errors,
                "excluded": counts.excluded,
            }
            for window, counts in stats.counts.items()
        },
        "uptime_hourly": [hour.json() for hour in hourly],
    }
