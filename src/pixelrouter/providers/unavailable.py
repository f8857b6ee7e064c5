"""A stand-in for a provider that cannot exist in this process (its dependencies are missing)."""

from __future__ import annotations

from collections.abc import Callable

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import ProviderUnavailable
from pixelrouter.providers.base import ProviderBase, ProviderInfo, ProviderStatus
from pixelrouter.types import ImageRequest, ImageResult, ProgressEvent


class UnavailableProvider(ProviderBase):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.info = ProviderInfo(
            slug="local",
            display_name="Local",
            models=(KLEIN_4B.id,),
            price=KLEIN_4B.price,
            kind="local",
        )

    async def generate(
        self,
        request: ImageRequest,
        on_progress: Callable[[ProgressEvent], None] | None = None,
    ) -> ImageResult:
        raise ProviderUnavailable(f"The local engine cannot take work: {self.reason}.")

    def readiness(self) -> tuple[bool, str]:
        return False, self.reason

    def status(self) -> ProviderStatus:
        return ProviderStatus(
            state="unavailable",
            details={"state": "unavailable", "queue_depth": 0, "reason": self.reason},
        )
