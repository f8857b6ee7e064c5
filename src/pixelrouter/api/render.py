"""Render a `Delivery` in each client's wire shape (JSON bodies and SSE chunks)."""

from __future__ import annotations

import time
from typing import Any

from pixelrouter import sse
from pixelrouter.billing.costs import Delivery
from pixelrouter.catalog import micro_to_usd
from pixelrouter.errors import PixelrouterError
from pixelrouter.types import GeneratedImage


def b64(image: GeneratedImage) -> str:
    return image.b64


def data_url(image: GeneratedImage) -> str:
    return f"data:{image.media_type};base64,{b64(image)}"


def usage(delivery: Delivery) -> dict[str, Any]:
    """OpenRouter usage: integer tokens, `cost` in USD (the only float money)."""
    return _usage(delivery.prompt_tokens, delivery.completion_tokens, delivery.cost_micro)


def _usage(prompt_tokens: int, completion_tokens: int, cost_micro: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        # The AI SDK's provider requires `reasoning_tokens` whenever the details are present.
        "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": completion_tokens},
        "cost": micro_to_usd(cost_micro),
        "is_byok": False,
    }


def openai_usage(delivery: Delivery) -> dict[str, Any]:
    """OpenAI Images usage fields, plus OpenRouter's so either SDK finds what it reads."""
    return _openai_usage(delivery.prompt_tokens, delivery.completion_tokens, delivery.cost_micro)


def _openai_usage(prompt_tokens: int, completion_tokens: int, cost_micro: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": prompt_tokens},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"image_tokens": completion_tokens, "text_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
        **_usage(prompt_tokens, completion_tokens, cost_micro),
    }


def openai_usage_of_image(delivery: Delivery, index: int) -> dict[str, Any]:
    """The usage of image `index` alone, for OpenAI's stream events (each must carry one):
    the prompt counted on the first, each image's tokens and cost on its own, so the events
    add up to the request's usage."""
    count = len(delivery.result.images)
    last = index == count - 1
    tokens = delivery.completion_tokens // count
    cost = delivery.cost_micro // count
    if last:  # whatever the division left over
        tokens = delivery.completion_tokens - tokens * (count - 1)
        cost = delivery.cost_micro - cost * (count - 1)
    return _openai_usage(delivery.prompt_tokens if index == 0 else 0, tokens, cost)


# ------------------------------------------------------------------------------- chat


def chat_completion(delivery: Delivery, urls: list[str] | None = None) -> dict[str, Any]:
    """The chat answer: each image as a `data:` URL, or as the `url` it is stored at."""
    result = delivery.result
    links = urls if urls is not None else [data_url(im) for im in result.images]
    return {
        "id": delivery.request.id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "provider": result.provider_name,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "native_finish_reason": "stop",
                "logprobs": None,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "refusal": None,
                    "reasoning": None,
                    "images": [{"type": "image_url", "image_url": {"url": url}} for url in links],
                },
            }
        ],
        "usage": usage(delivery),
    }


def chat_chunk(
    generation_id: str,
    model: str,
    created: int,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    provider: str | None = None,
    usage_block: dict[str, Any] | None = None,
    error: PixelrouterError | None = None,
    no_choices: bool = False,
) -> dict[str, Any]:
    # No `system_fingerprint` in chunks: the TypeScript SDK's chunk schema refuses `null` there
    # (non-streamed results keep it, where the SDKs require the key).
    chunk: dict[str, Any] = {
        "id": generation_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if no_choices
        else [
            {
                "index": 0,
                "delta": delta or {},
                "finish_reason": finish_reason,
                "native_finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
    }
    if provider:
        chunk["provider"] = provider
    if usage_block is not None:
        chunk["usage"] = usage_block
    if error is not None:
        chunk["error"] = {
            "code": error.status,
            "message": error.message,
            "metadata": {"error_type": error.error_type, **error.metadata},
        }
    return chunk


# --------------------------------------------------------------------- Image APIs


def images_response(delivery: Delivery, urls: list[str] | None = None) -> dict[str, Any]:
    """The OpenRouter Image API answer: each image as `b64_json`, or as the `url` it is
    stored at."""
    images = delivery.result.images
    data = (
        [{"url": url, "media_type": im.media_type} for url, im in zip(urls, images, strict=True)]
        if urls is not None
        else [{"b64_json": b64(im), "media_type": im.media_type} for im in images]
    )
    return {"created": int(time.time()), "data": data, "usage": usage(delivery)}


def openai_images_response(delivery: Delivery, urls: list[str] | None = None) -> dict[str, Any]:
    """The OpenAI Images answer: each image as `b64_json`, or as the `url` it is stored at."""
    request = delivery.request
    images = delivery.result.images
    data = (
        [{"url": url, "revised_prompt": None} for url in urls]
        if urls is not None
        else [{"b64_json": b64(im), "revised_prompt": None} for im in images]
    )
    return {
        "created": int(time.time()),
        "data": data,
        "output_format": request.output_format,
        "size": f"{request.width}x{request.height}",
        "background": "opaque",
        "usage": openai_usage(delivery),
    }


# --------------------------------------------------------------------------- SSE


# The stream's framing is shared with the CLI, which reads it (`pixelrouter.sse`).
sse_data = sse.sse_data
sse_comment = sse.sse_comment


# ------------------------------------------------------------------- router metadata


def router_metadata(delivery: Delivery, serving: list[tuple[str, str]]) -> dict[str, Any]:
    """`openrouter_metadata` (asked for with `X-OpenRouter-Metadata: enabled`), built from the
    attempts the generation records; `serving` is (model, provider slug) of every endpoint that
    could have taken it."""
    request, result = delivery.request, delivery.result
    attempts = result.attempts
    strategy = "fallback" if result.model != request.model or len(attempts) > 1 else "direct"
    tried = ", ".join(f"{a.provider_slug or a.provider_name} {a.status}" for a in attempts)
    return {
        "requested": request.model,
        "strategy": strategy,
        "attempt": len(attempts),
        "is_byok": False,
        "region": None,
        "summary": f"{result.model} served by {result.provider_slug} (attempts: {tried})",
        "generation_time": result.generation_time_ms,
        "endpoints": {
            "total": len(serving),
            "available": [
                {
                    "model": model,
                    "provider": slug,
                    "selected": (model, slug) == (result.model, result.provider_slug),
                }
                for model, slug in serving
            ],
        },
        "attempts": [
            {
                "model": a.model or request.model,
                "provider": a.provider_slug or a.provider_name,
                "status": a.status,
            }
            for a in attempts
        ],
    }
