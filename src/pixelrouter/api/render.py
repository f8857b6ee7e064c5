"""Render a `Delivery` in each client's wire shape (JSON bodies and SSE chunks)."""

from __future__ import annotations

import time
from typing import Any

import orjson

from pixelrouter.catalog import micro_to_usd
from pixelrouter.errors import PixelrouterError
from pixelrouter.service import Delivery
from pixelrouter.types import GeneratedImage


def b64(image: GeneratedImage) -> str:
    return image.b64


def data_url(image: GeneratedImage) -> str:
    return f"data:{image.media_type};base64,{b64(image)}"


def usage(delivery: Delivery) -> dict[str, Any]:
    """OpenRouter usage: integer tokens, `cost` in USD (the only float money)."""
    return {
        "prompt_tokens": delivery.prompt_tokens,
        "completion_tokens": delivery.completion_tokens,
        "total_tokens": delivery.prompt_tokens + delivery.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"image_tokens": delivery.completion_tokens},
        "cost": micro_to_usd(delivery.cost_micro),
        "is_byok": False,
    }


def openai_usage(delivery: Delivery) -> dict[str, Any]:
    """OpenAI Images usage fields, plus OpenRouter's so either SDK finds what it reads."""
    return {
        "input_tokens": delivery.prompt_tokens,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": delivery.prompt_tokens},
        "output_tokens": delivery.completion_tokens,
        "output_tokens_details": {"image_tokens": delivery.completion_tokens, "text_tokens": 0},
        "total_tokens": delivery.prompt_tokens + delivery.completion_tokens,
        **usage(delivery),
    }


# ------------------------------------------------------------------------------- chat


def chat_completion(delivery: Delivery) -> dict[str, Any]:
    result = delivery.result
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
                    "images": [
                        {"type": "image_url", "image_url": {"url": data_url(im)}}
                        for im in result.images
                    ],
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
    chunk: dict[str, Any] = {
        "id": generation_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
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


def images_response(delivery: Delivery) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": [
            {"b64_json": b64(im), "media_type": im.media_type} for im in delivery.result.images
        ],
        "usage": usage(delivery),
    }


def openai_images_response(delivery: Delivery) -> dict[str, Any]:
    request = delivery.request
    return {
        "created": int(time.time()),
        "data": [{"b64_json": b64(im), "revised_prompt": None} for im in delivery.result.images],
        "output_format": request.output_format,
        "size": f"{request.width}x{request.height}",
        "background": "opaque",
        "usage": openai_usage(delivery),
    }


# --------------------------------------------------------------------------- SSE


def sse_data(payload: dict[str, Any] | str) -> bytes:
    if isinstance(payload, str):
        return f"data: {payload}\n\n".encode()
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()
