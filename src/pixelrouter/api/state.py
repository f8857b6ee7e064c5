"""What the routes share: settings, catalogue, store, router and the generation service."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from pixelrouter.catalog import Catalog
from pixelrouter.config import Settings
from pixelrouter.providers.base import Provider
from pixelrouter.refimages import FetchPolicy
from pixelrouter.routing.router import Router
from pixelrouter.service import GenerationService
from pixelrouter.store import Store


@dataclass
class AppState:
    settings: Settings
    catalog: Catalog
    store: Store
    providers: list[Provider]
    router: Router
    service: GenerationService
    demo: bool = False
    accepting: bool = True

    @property
    def fetch_policy(self) -> FetchPolicy:
        s = self.settings
        return FetchPolicy(
            enabled=s.fetch_image_urls,
            allow_private=s.allow_private_image_urls,
            max_bytes=s.max_image_url_bytes,
            timeout_s=s.image_url_timeout_s,
        )


def app_state(request: Request) -> AppState:
    return request.app.state.px  # type: ignore[no-any-return]
