"""The `openrouter` provider: any OpenRouter-compatible chat API (OpenRouter itself, or a
pixelrouter's `/chat/completions`), asked for images with `modalities: ["image", "text"]`.

Sizes. The chat API has no size field: only `image_config.aspect_ratio` and
`image_config.image_size` (a tier). A request whose size is exactly what some ratio and tier
resolve to (SPEC §2: 1024x1024 = 1:1 at 1K, 1360x768 = 16:9 at 1K, ...) is sent as that pair;
any other size cannot be expressed, so `supports()` is false and routing never sends it here.
Asking for the nearest ratio instead would bill the client for a size they did not ask for,
which SPEC §2 forbids; and an image of another size that comes back anyway fails the size
check (a fall-through 502), never a delivery. For the same reason `size` is not among the
declared parameters, so `provider.require_parameters` skips this provider when a size is given.

Images are asked for one call each, image `i` with `seed + i`: hosted chat APIs ignore `n`, and
this keeps the seeds of a pixelrouter upstream the same as its Image API's. `steps` and
`guidance` travel in `image_config` (a pixelrouter reads them; hosted models ignore them, so they
are not declared unless `options.supported_parameters` says so).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pixelrouter.catalog import ASPECT_RATIOS, TIERS, size_for_ratio, size_is_valid
from pixelrouter.providers.http import HTTPProvider
from pixelrouter.providers.upstream_images import (
    Delivered,
    each_image,
    png_data_url,
    reference_pngs,
)
from pixelrouter.types import Encoded, ImageRequest

DECLARED_PARAMETERS = (
    "seed",
    "n",
    "image_config",
    "aspect_ratio",
    "image_size",
    "resolution",
    "output_format",
    "output_compression",
    "input_references",
)


def _size_grid() -> dict[tuple[int, int], tuple[str, str]]:
    grid: dict[tuple[int, int], tuple[str, str]] = {}
    for tier in ("1K", *(t for t in TIERS if t != "1K")):  # 1K first: the usual default
        for ratio, (a, b) in ASPECT_RATIOS.items():
            size = size_for_ratio(a, b, tier)
            if size_is_valid(*size):
                grid.setdefault(size, (ratio, tier))
    return grid


SIZE_GRID = _size_grid()


def ratio_and_tier(width: int, height: int) -> tuple[str, str] | None:
    """The (aspect_ratio, image_size) that resolve to exactly this size, if any."""
    return SIZE_GRID.get((width, height))


class OpenRouterProvider(HTTPProvider):
    """POST `{url}/chat/completions`; images from `choices[0].message.images[*].image_url`."""

    kind: ClassVar[str] = "openrouter"
    default_parameters: ClassVar[tuple[str, ...]] = DECLARED_PARAMETERS

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        if ratio_and_tier(request.width, request.height) is None:
            return (
                f"the chat API cannot ask for {request.width}x{request.height}, only for an "
                "aspect ratio at a 0.5K/1K/2K tier"
            )
        return super().unsupported_reason(request)

    async def _deliver(self, request: ImageRequest) -> Delivered:
        pair = ratio_and_tier(request.width, request.height)
        assert pair is not None  # generate() checked unsupported_reason
        ratio, tier = pair
        content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
        for png in await reference_pngs(request):
            content.append({"type": "image_url", "image_url": {"url": png_data_url(png)}})
        image_config: dict[str, Any] = {"aspect_ratio": ratio, "image_size": tier}
        if request.steps is not None:
            image_config["steps"] = request.steps
        if request.guidance is not None:
            image_config["guidance"] = request.guidance
        body: dict[str, Any] = {
            "model": self.upstream_model(request),
            "messages": [{"role": "user", "content": content}],
            "modalities": ["image", "text"],
            "image_config": image_config,
            "stream": False,
        }

        async def one(index: int) -> tuple[Encoded, int | None]:
            payload = await self.post_json(
                f"{self.url}/chat/completions",
                {**body, "seed": request.seed + index},
                what="chat completion",
            )
            return await self._first_image(payload), _prompt_tokens(payload)

        return await each_image(request, one)

    async def _first_image(self, payload: dict[str, Any]) -> Encoded:
        error = payload.get("error")
        if error and not payload.get("choices"):  # an error reported with HTTP 200
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise self.error(f"reported an error: {str(message)[:300]}")
        try:
            message = payload["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise self.error("sent a chat completion without choices[0].message.") from None
        images = message.get("images") if isinstance(message, dict) else None
        if not images:
            text = message.get("content") if isinstance(message, dict) else None
            said = f" (it said: {str(text)[:200]!r})" if text else ""
            raise self.error(f"answered without an image{said}.")
        first = images[0]
        url = first.get("image_url") if isinstance(first, dict) else None
        url = url.get("url") if isinstance(url, dict) else url
        return await self.fetch_image(url)


def _prompt_tokens(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None
