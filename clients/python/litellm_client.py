"""LiteLLM's `openrouter/` provider against pixelrouter: image generation and image edits (which
LiteLLM turns into chat completions with `image_config`), chat completions with image output
(plain, streamed, async) and its model listing.

LiteLLM maps OpenAI-style arguments itself (`size` -> `image_config.aspect_ratio`, `quality` ->
`image_config.image_size`), so each call's expected image size is computed from the body LiteLLM
actually sent, which every line prints.

    PIXELROUTER_BASE_URL=http://127.0.0.1:8000/api/v1 PIXELROUTER_API_KEY=... \
    PIXELROUTER_ADMIN_KEY=... python clients/python/litellm_client.py
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import typing

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map

import litellm  # noqa: E402
from common import (  # noqa: E402
    MODEL,
    PROMPT,
    Matrix,
    SentRequests,
    check,
    check_images,
    env,
    ratio_size,
    reference_png,
    shorten,
)
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402

BASE_URL, API_KEY, _ = env()
LITELLM_MODEL = f"openrouter/{MODEL}"
CONNECTION = {"api_base": BASE_URL, "api_key": API_KEY, "timeout": 120}
litellm.telemetry = False
litellm.suppress_debug_info = True  # no help banners on stdout
litellm.num_retries = 0


class RequestBodies(CustomLogger):
    """LiteLLM's own pre-call hook: the JSON body it sends. It covers the async paths (aiohttp),
    which `SentRequests` (httpx) does not see; `image_edit` skips this hook but uses httpx."""

    last: dict[str, typing.Any] = {}

    def log_pre_api_call(self, model: str, messages: typing.Any, kwargs: dict) -> None:
        RequestBodies.last = (kwargs.get("additional_args") or {}).get("complete_input_dict") or {}


litellm.callbacks = [RequestBodies()]
wire = SentRequests()
_read = 0


def current() -> dict[str, typing.Any]:
    """The body of the request the running call sent."""
    new = wire.requests[_read:]
    return new[-1][2] if new else RequestBodies.last


def sent() -> dict[str, typing.Any]:
    """current(), then forgotten: the next call starts afresh."""
    global _read
    body, _read, RequestBodies.last = current(), len(wire.requests), {}
    return body


def asked_size(body: dict[str, typing.Any], default_ratio: str = "1:1") -> tuple[int, int]:
    """The size pixelrouter must make for a chat body: image_config's ratio and tier (SPEC §2;
    a tier above 2K is clamped to 2K)."""
    config = body.get("image_config") or {}
    tier = config.get("image_size", "1K")
    return ratio_size(config.get("aspect_ratio", default_ratio), "2K" if tier == "4K" else tier)


def sent_text() -> str:
    body = sent()
    return f"sent {json.dumps(shorten(body))}" if body else "sent no JSON body"


m = Matrix("litellm", context=sent_text)
case = m.case


# -- litellm.image_generation -> POST /chat/completions -------------------------------------------


def generated(result: typing.Any, n: int = 1, default_ratio: str = "1:1") -> str:
    """Every image of a LiteLLM ImageResponse, at the size the sent body asked for."""
    return check_images(
        [d.b64_json for d in result.data], [asked_size(current(), default_ratio)] * n
    )


for label, fields in {
    "size=256x256": {"size": "256x256"},
    "size=1792x1024": {"size": "1792x1024"},
    "size=1024x1536": {"size": "1024x1536"},
    "quality=low": {"quality": "low"},
    "quality=medium": {"quality": "medium"},
    "quality=high": {"quality": "high"},
}.items():

    @case(f"image_generation {label}")
    def _(fields: dict[str, str] = fields) -> str:
        return generated(
            litellm.image_generation(model=LITELLM_MODEL, prompt=PROMPT, **fields, **CONNECTION)
        )


@case("image_generation n=2 size=512x512")
def _() -> str:
    result = litellm.image_generation(
        model=LITELLM_MODEL, prompt=PROMPT, n=2, size="512x512", **CONNECTION
    )
    check(
        result.usage is not None and result.usage.output_tokens == 2 * 4096, f"usage {result.usage}"
    )
    return generated(result, n=2)


@case("aimage_generation (async)")
def _() -> str:
    return generated(
        asyncio.run(litellm.aimage_generation(model=LITELLM_MODEL, prompt=PROMPT, **CONNECTION))
    )


# -- litellm.image_edit -> POST /chat/completions with image_url parts ---------------------------


@case("image_edit one image")
def _() -> str:
    image = io.BytesIO(reference_png(320, 240))
    # No image_config: the first reference's ratio (4:3) at 1K.
    return generated(
        litellm.image_edit(model=LITELLM_MODEL, prompt=PROMPT, image=image, **CONNECTION), 1, "4:3"
    )


@case("image_edit several images size=1024x1024 quality=low n=2")
def _() -> str:
    images = [io.BytesIO(reference_png(320, 240)), io.BytesIO(reference_png(256, 256))]
    result = litellm.image_edit(
        model=LITELLM_MODEL,
        prompt=PROMPT,
        image=images,
        size="1024x1024",
        quality="low",
        n=2,
        **CONNECTION,
    )
    return generated(result, n=2)


# -- litellm.completion -> POST /chat/completions -------------------------------------------------

MESSAGES = [{"role": "user", "content": PROMPT}]


def completion_images(choices: typing.Iterable[typing.Any], field: str = "message") -> list[str]:
    return [
        image["image_url"]["url"]
        for choice in choices
        for image in (getattr(getattr(choice, field), "images", None) or [])
    ]


@case("completion modalities=[image,text]")
def _() -> str:
    response = litellm.completion(
        model=LITELLM_MODEL, messages=MESSAGES, modalities=["image", "text"], **CONNECTION
    )
    return check_images(completion_images(response.choices), [asked_size(current())])


@case("completion modalities=[image,text] image_config=16:9/0.5K (provider-specific kwarg)")
def _() -> str:
    response = litellm.completion(
        model=LITELLM_MODEL,
        messages=MESSAGES,
        modalities=["image", "text"],
        image_config={"aspect_ratio": "16:9", "image_size": "0.5K"},
        **CONNECTION,
    )
    check(current().get("image_config"), "LiteLLM did not send image_config")
    return check_images(completion_images(response.choices), [ratio_size("16:9", "0.5K")])


@case("completion modalities=[image,text] stream=True")
def _() -> str:
    stream = litellm.completion(
        model=LITELLM_MODEL,
        messages=MESSAGES,
        modalities=["image", "text"],
        stream=True,
        stream_options={"include_usage": True},
        **CONNECTION,
    )
    chunks = list(stream)
    finishes = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    check("stop" in finishes, f"finish reasons {finishes}")
    images = completion_images([c for chunk in chunks for c in chunk.choices], "delta")
    return check_images(images, [asked_size(current())]) + f", {len(chunks)} chunks"


@case("acompletion (async) modalities=[image,text]")
def _() -> str:
    response = asyncio.run(
        litellm.acompletion(
            model=LITELLM_MODEL, messages=MESSAGES, modalities=["image", "text"], **CONNECTION
        )
    )
    return check_images(completion_images(response.choices), [asked_size(current())])


# -- litellm.get_valid_models -> GET /models/user -------------------------------------------------


@case("get_valid_models(custom_llm_provider=openrouter, check_provider_endpoint=True)")
def _() -> str:
    models = litellm.get_valid_models(
        check_provider_endpoint=True,
        custom_llm_provider="openrouter",
        api_base=BASE_URL,
        api_key=API_KEY,
    )
    # LiteLLM swallows errors here and returns []; it lists GET {api_base}/models/user.
    check(LITELLM_MODEL in models, f"got {models} (LiteLLM asks GET {BASE_URL}/models/user)")
    return f"{models}"


m.exit()
