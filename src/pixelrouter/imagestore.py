"""Stored images behind signed, expiring URLs (docs/images-store.md).

An image a client asked to fetch later (`response_format: "url"`) is written, byte for byte as
it was made or received, to an object store: a directory under the data dir by default, or any
bucket `obstore` reaches by URL (`s3://`, `gs://`, `az://`; `memory://` for a throwaway one).
Its URL is `/api/v1/files/<key>?expires=<unix>&signature=<hex>`, where the signature is an
HMAC-SHA256 of the key and the expiry under the store's secret: the URL is the credential, so
a browser's `<img>` can load it without an API key, and nobody can make one for another key or
a later expiry. A sweeper deletes what is older than the retention.

Every process of a fleet must share the secret (`PIXELROUTER_STORAGE_SECRET`) and the bucket;
a single server keeps a generated secret in its data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import obstore
from obstore.store import LocalStore, from_url

from pixelrouter.errors import ConfigError

FILES_PATH = "/api/v1/files/"
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {media: ext for ext, media in MEDIA_TYPES.items()}
SECRET_FILE = "storage-secret"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredImage:
    key: str
    media_type: str
    size: int


@dataclass(frozen=True)
class Fetched:
    data: bytes
    media_type: str


class ImageStore:
    """Put, sign, verify, get and sweep images in one object store."""

    def __init__(self, store: Any, secret: bytes, url_ttl_s: int, retention_s: int) -> None:
        if len(secret) < 16:
            raise ConfigError("the image store's signing secret must be at least 16 bytes")
        self._store = store
        self._secret = secret
        self.url_ttl_s = url_ttl_s
        self.retention_s = retention_s

    @classmethod
    def open(
        cls,
        url: str,
        secret: bytes,
        *,
        url_ttl_s: int,
        retention_s: int,
        options: dict[str, Any] | None = None,
    ) -> ImageStore:
        """A store at `url`: a local path or `file://` URL (created if missing), or any URL
        `obstore.store.from_url` reads, with `options` as its configuration (an S3 endpoint,
        region, credentials; unset ones come from the environment, e.g. `AWS_*`)."""
        try:
            if "://" not in url or url.startswith("file://"):
                path = Path(url.removeprefix("file://")).expanduser().resolve()
                path.mkdir(parents=True, exist_ok=True)
                store: Any = LocalStore(str(path))
            else:
                store = from_url(url, **(options or {}))
        except (OSError, ValueError, obstore.exceptions.BaseError) as exc:
            raise ConfigError(f"cannot open the image store at {url!r}: {exc}") from exc
        return cls(store, secret, url_ttl_s, retention_s)

    async def put(self, data: bytes, media_type: str) -> StoredImage:
        """Store `data` as it is under a new key (never the same twice)."""
        ext = EXTENSIONS.get(media_type)
        if ext is None:
            raise ValueError(f"no stored images of type {media_type!r}")
        day = datetime.now(UTC).strftime("%Y/%m/%d")
        key = f"{day}/{secrets.token_urlsafe(18)}.{ext}"
        await obstore.put_async(self._store, key, data)
        return StoredImage(key, media_type, len(data))

    def signed_path(self, key: str, now: float | None = None) -> tuple[str, int]:
        """The URL path (with its query) that serves `key` until the returned expiry."""
        expires = int(now if now is not None else time.time()) + self.url_ttl_s
        query = urlencode({"expires": expires, "signature": self.signature(key, expires)})
        return f"{FILES_PATH}{key}?{query}", expires

    def signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode("utf-8", "replace")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signed(self, key: str, expires: int, signature: str) -> bool:
        given = signature.encode("utf-8", "replace")  # any text a URL may carry
        return hmac.compare_digest(self.signature(key, expires).encode(), given)

    async def get(self, key: str) -> Fetched | None:
        """The stored image, or None when there is none (never stored, deleted or swept)."""
        media_type = MEDIA_TYPES.get(key.rsplit(".", 1)[-1])
        if media_type is None or not _safe_key(key):
            return None
        try:
            result = await obstore.get_async(self._store, key)
            data = bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        return Fetched(data, media_type)

    async def delete(self, key: str) -> None:
        if _safe_key(key):
            with contextlib.suppress(FileNotFoundError):  # already gone
                await obstore.delete_async(self._store, key)

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete every image stored longer ago than the retention; how many went."""
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.retention_s)
        old: list[str] = []
        async for batch in obstore.list(self._store, chunk_size=1000):
            old.extend(meta["path"] for meta in batch if meta["last_modified"] < cutoff)
        for start in range(0, len(old), 1000):
            await obstore.delete_async(self._store, old[start : start + 1000])
        return len(old)


def _safe_key(key: str) -> bool:
    """A key this store could have made: no empty, `.` or `..` segment, no backslash."""
    parts = key.split("/")
    return bool(key) and "\\" not in key and all(p not in ("", ".", "..") for p in parts)


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The signing secret: the configured one, else one generated once into the data dir
    (owner-only), which suits a single server; a fleet must configure one for all."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this server won the race: use its secret
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(secret)
    return secret


async def sweep_forever(open_store: Callable[[], ImageStore | None], retention_s: int) -> None:
    """Delete images past their retention, every quarter of it (at most hourly); a store
    `open_store` does not give (None: none in use yet) is looked for again next time."""
    interval = max(1.0, min(retention_s / 4, 3600.0))
    while True:
        try:
            images = open_store()
            if images is not None:
                swept = await images.sweep()
                if swept:
                    log.info("image store: deleted %d image(s) past their retention", swept)
        except ConfigError as exc:  # the store cannot be opened: said, without a traceback
            log.warning("the image store's sweeper cannot run: %s", exc)
        except Exception:
            log.exception("the image store's sweeper failed; it tries again")
        await asyncio.sleep(interval)
