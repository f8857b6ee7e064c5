"""What a request may cost and what a delivery costs: prices, never the database's rows.

The maximum cost is reserved at admission (SPEC §7); a delivery is priced at the serving
provider's own price, per image and megapixel, never above what was reserved. A key that cannot
pay is a 402 whose message says what is left and what was asked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from pixelrouter.catalog import (
    Catalog,
    Price,
    batch_price,
    image_price,
    image_tokens,
    micro_to_usd,
)
from pixelrouter.errors import PaymentRequired, PixelrouterError, UpstreamFailed
from pixelrouter.routing.router import Router
from pixelrouter.store import KeyRecord, Store
from pixelrouter.types import ImageRequest, ImageResult

log = logging.getLogger("pixelrouter.billing")


@dataclass(frozen=True)
class Delivery:
    """A finished generation: the images and what they cost."""

    request: ImageRequest
    result: ImageResult
    cost_micro: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int


def usd(micro: int) -> str:
    """`$0.014`: micro-dollars as a message shows them."""
    return f"${micro_to_usd(micro):.6f}".rstrip("0").rstrip(".")


class Costs:
    """Prices as routing sees them: the providers a request may be served by, and their own
    prices (the catalogue's price for a model only where no provider names one)."""

    def __init__(
        self, store: Store, router: Router, catalog: Catalog, *, batch_discount_ppm: int = 0
    ) -> None:
        self.store = store
        self.router = router
        self.catalog = catalog
        # The batch discount where a provider's price does not name its own ([batches]).
        self.batch_discount_ppm = batch_discount_ppm

    def price_of(self, provider_slug: str | None, model: str) -> Price:
        """What one image costs: the serving provider's price, else the model's."""
        for provider in self.router.providers:
            if provider.info.slug == provider_slug:
                return provider.info.price
        return self.catalog.get(model).price

    def discount_ppm(self, price: Price) -> int:
        """The batch discount of a price: its own, else the server's default."""
        own = price.batch_discount_ppm
        return self.batch_discount_ppm if own is None else own

    def image_cost(self, request: ImageRequest, price: Price, width: int, height: int) -> int:
        """One image at `price`, unless the request's adapters override it: then at the
        dearest of their prices (docs/loras.md, "Price"); an item of a batch with the
        serving price's batch discount taken off (docs/batches.md, "Pricing")."""
        overrides = [choice.price for choice in request.loras if choice.price is not None]
        if overrides:
            cost = max(image_price(p, width, height) for p in overrides)
        else:
            cost = image_price(price, width, height)
        return batch_price(cost, self.discount_ppm(price)) if request.in_batch else cost

    def max_cost(self, request: ImageRequest) -> int:
        """Every requested image at the resolved size, at the dearest provider the request may
        be served by: of any model it may fall back to, among the providers its preferences
        allow (`only`, `ignore`, `max_price`, ...: a request that names a cheaper provider
        reserves its price, not the dearest one's)."""
        per_image = 0
        for model in (request.model, *request.fallback_models):
            for provider in self.router.eligible(request, model):
                price = self.image_cost(request, provider.info.price, request.width, request.height)
                per_image = max(per_image, price)
        return request.n * per_image

    def delivery(
        self,
        request: ImageRequest,
        result: ImageResult,
        *,
        reserved_micro: int,
        latency_ms: int,
        prompt_tokens: Callable[[str], int],
    ) -> Delivery:
        """Keep what was asked for (at most n images of the asked size) and price it at the
        serving provider's price, never above what was reserved."""
        wanted = [
            image
            for image in result.images
            if (image.width, image.height) == (request.width, request.height)
        ][: request.n]
        if not wanted:
            raise UpstreamFailed(
                f"{result.provider_name} returned no image of the requested size.",
                metadata={"provider": result.provider_name},
            )
        if len(wanted) != len(result.images):
            log.warning(
                "%s returned %d image(s) for %s, %d usable",
                result.provider_name,
                len(result.images),
                request.id,
                len(wanted),
            )
            result = replace(result, images=tuple(wanted))
        price = self.price_of(result.provider_slug, result.model)
        cost = sum(self.image_cost(request, price, im.width, im.height) for im in wanted)
        if request.key_hash is not None:
            cost = min(cost, reserved_micro)
        completion = sum(image_tokens(im.width, im.height) for im in wanted)
        prompt = result.prompt_tokens or prompt_tokens(request.prompt)
        return Delivery(request, result, cost, prompt, completion, latency_ms)

    async def check_credit(
        self, key: KeyRecord, model: str | None, n: int | None, *, references: int
    ) -> None:
        """Before reference images are decoded (the costly part of reading a request): a key
        whose remaining credit cannot pay for `n` of the cheapest image it could ask for is a
        402 at once. The reservation at admission is the exact check (a request without
        references reaches it without costly work); this one spares the decoding of a request
        that cannot pass it."""
        if key.limit_micro is None or not references:
            return
        try:
            entry = self.catalog.get(model) if model else self.catalog.default
        except PixelrouterError:
            return  # an unknown model: the translation says so
        prices = [p.info.price.first_mp for p in self.router.serves(entry.id)]
        cheapest = min(prices, default=entry.price.first_mp)
        images = max(1, min(int(n or 1), entry.max_images_per_request))
        balance = await asyncio.to_thread(self.store.key_balance, key.hash)
        remaining = balance.remaining(key.limit_micro) or 0
        if remaining < images * cheapest:
            reset = f", resets {key.limit_reset}" if key.limit_reset else ""
            raise PaymentRequired(
                f"This key has {usd(remaining)} left of its {usd(key.limit_micro)} "
                f"limit{reset}; {images} image(s) cost at least {usd(images * cheapest)}. "
                "Ask for fewer images, or raise the key's limit.",
                metadata={
                    "required": micro_to_usd(images * cheapest),
                    "limit_remaining": micro_to_usd(remaining),
                },
            )

    def payment_required(self, request: ImageRequest, amount: int) -> PaymentRequired:
        """The 402 of a reservation the key's limit could not cover (in a worker thread)."""
        assert request.key_hash is not None
        key = self.store.find_key(request.key_hash)
        balance = self.store.key_balance(request.key_hash)
        limit = key.limit_micro if key is not None else None
        remaining = balance.remaining(limit) or 0
        reset = f", resets {key.limit_reset}" if key is not None and key.limit_reset else ""
        return PaymentRequired(
            f"This request can cost up to {usd(amount)} ({request.n} image(s) of "
            f"{request.width}x{request.height}); this key has {usd(remaining)} left of its "
            f"{usd(limit or 0)} limit{reset}. Ask for fewer or smaller images, or raise the "
            "key's limit.",
            metadata={
                "required": micro_to_usd(amount),
                "limit_remaining": micro_to_usd(remaining),
            },
        )
