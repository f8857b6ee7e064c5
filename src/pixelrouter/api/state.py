"""What the routes share: settings, catalogue, store, router and the generation service."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request

from pixelrouter.catalog import Catalog
from pixelrouter.config import Settings
from pixelrouter.generations import GenerationService
from pixelrouter.imagestore import ImageStore, load_secret
from pixelrouter.lora_files import LoraUploads
from pixelrouter.providers.base import Provider
from pixelrouter.refimages import FetchPolicy
from pixelrouter.routing.router import Router
from pixelrouter.store import KeyRecord, Store

# How long a key read from the database answers for it in this process. Another process's
# change (a key disabled from the CLI or another gateway) takes effect within this; this
# process's own changes at once (`RecentKeys.forget`).
KEY_CACHE_TTL_S = 1.0


@dataclass
class RecentKeys:
    """Keys looked up in the last `ttl_s` seconds, by hash: a generation request then makes
    no database round trip just to authenticate."""

    ttl_s: float = KEY_CACHE_TTL_S
    _keys: dict[str, tuple[float, KeyRecord]] = field(default_factory=dict)

    def get(self, key_hash: str) -> KeyRecord | None:
        entry = self._keys.get(key_hash)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, record: KeyRecord) -> None:
        if len(self._keys) > 10_000:  # bounded: drop what has expired
            now = time.monotonic()
            self._keys = {h: e for h, e in self._keys.items() if now - e[0] <= self.ttl_s}
        self._keys[record.hash] = (time.monotonic(), record)

    def forget(self, key_hash: str) -> None:
        self._keys.pop(key_hash, None)


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
    recent_keys: RecentKeys = field(default_factory=RecentKeys)
    _images: ImageStore | None = None

    _secret: bytes | None = None
    # The batch runner of this process (api/batches/runner.py); None until the app starts.
    batches: Any = None

    @property
    def signing_secret(self) -> bytes:
        """The server's secret: it signs stored images' URLs and derives webhook secrets."""
        if self._secret is None:
            self._secret = load_secret(self.settings.storage_secret, self.settings.data_dir)
        return self._secret

    @property
    def images(self) -> ImageStore:
        """The image store (docs/image-store.md), opened at first use: a server that never
        stores an image makes no directory for it."""
        if self._images is None:
            s = self.settings
            self._images = ImageStore.open(
                s.resolved_storage_url,
                self.signing_secret,
                url_ttl_s=s.storage_url_ttl_s,
                retention_s=s.storage_retention_s,
                options=s.storage_options,
            )
        return self._images

    def images_in_use(self) -> ImageStore | None:
        """The image store if this server has one in use: opened already, configured, or its
        default directory exists (images stored by an earlier run); None otherwise."""
        s = self.settings
        if self._images is None and not s.storage_url and not Path(s.resolved_storage_url).exists():
            return None
        return self.images

    lora_uploads: LoraUploads | None = None  # None: uploads are not kept (no lora_dir)
    # One adapter upload or removal at a time: a name is checked, stored and registered whole.
    lora_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

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
