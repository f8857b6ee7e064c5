"""The `local` provider: this process's engine behind the `Provider` protocol.

The module imports without torch; the engine (and with it torch and diffusers) is imported when a
`LocalProvider` is built without an engine passed in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pixelrouter.catalog import KLEIN_4B, Price
from pixelrouter.errors import ProviderUnavailable
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.types import ImageRequest, ImageResult, ProgressEvent

if TYPE_CHECKING:
    from pixelrouter.engine.pipeline import EngineConfig
    from pixelrouter.engine.scheduler import Engine

LOCAL_SLUG = "local"


class LocalProvider(ProviderBase):
    """Sends requests to the in-process `Engine`; routing sees its queue through `status()`."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        config: EngineConfig | None = None,
        models: tuple[str, ...] = (KLEIN_4B.id,),
        price: Price = KLEIN_4B.price,
        supported_parameters: tuple[str, ...] = KLEIN_4B.supported_parameters,
        start: bool = True,
        slug: str = LOCAL_SLUG,
        display_name: str | None = None,  # None: the engine's (it names the loaded weights)
        zdr: bool = True,  # this process keeps no prompt and no image
        quantization: str | None = None,  # None: from the loaded weights' dtype
    ) -> None:
        if engine is None:
            from pixelrouter.engine.scheduler import Engine

            engine = Engine(config)
        self.engine = engine
        self._models = models
        self._price = price
        self._supported_parameters = supported_parameters
        self._slug = slug
        self._display_name = display_name
        self._zdr = zdr
        self._declared_quantization = quantization
        if start:
            engine.start()

    def unsupported_reason(self, request: ImageRequest) -> str | None:
        """This engine applies the adapters registered with it and accepted at registration."""
        registry = self.engine.cfg.loras
        missing = [
            choice.name
            for choice in request.loras
            if (check := registry.check_of(choice.name)) is None or not check.ok
        ]
        if missing:
            return f"it does not hold the LoRA adapter(s) {', '.join(missing)}"
        return None

    @property
    def info(self) -> ProviderInfo:  # a property: the display name is known once loaded
        return ProviderInfo(
            slug=self._slug,
            display_name=self._display_name or self.engine.display_name,
            models=self._models,
            price=self._price,
            kind="local",
            quantization=self._declared_quantization or self._quantization(),
            data_collection="deny",
            supported_parameters=self._supported_parameters,
            zdr=self._zdr,
        )

    def _quantization(self) -> str | None:
        loaded = self.engine.loaded
        if loaded is None:
            return None
        return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(
            str(loaded.dtype).removeprefix("torch.")
        )

    async def generate(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        ready, reason = self.engine.readiness()
        if not ready:
            raise ProviderUnavailable(f"The local engine cannot take work: {reason.rstrip('.')}.")
        return await self.engine.generate(request, on_progress)

    def readiness(self) -> tuple[bool, str]:
        return self.engine.readiness()

    def status(self) -> ProviderStatus:
        return engine_status(self.engine.status())

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return self.engine.count_prompt_tokens(prompt)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.engine.shutdown)


def engine_status(figures: dict[str, Any]) -> ProviderStatus:
    """The typed status of an engine's `Engine.status()` figures, which it keeps whole as
    `details` (GET /api/v1/engine/status serves them)."""
    return ProviderStatus(
        state=figures["state"],
        queue_depth=figures["queue_depth"],
        queue_full=figures["queue_full"],
        estimated_wait_s=figures["estimated_wait_s"],
        running_batch=figures["running_batch"],
        queued_images=figures["queued_images"],
        running_images=figures["running_images"],
        batch_sizes=figures["batch_sizes"],
        error=figures["error"],
        details=figures,
    )
