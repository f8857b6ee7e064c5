"""Settings from flags, `pixelrouter.toml`, the environment (`PIXELROUTER_*`) and defaults:
flags win over the file, the file over the environment.

The one configuration tree: the server's, the bookkeeping's and the local engine's settings
(`Settings.engine_config`) are all read here and passed down as values.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixelrouter.catalog import KLEIN_4B
from pixelrouter.errors import ConfigError
from pixelrouter.loras import LoraRegistry, parse_lora_tables
from pixelrouter.price_tables import share_ppm

if TYPE_CHECKING:
    from pixelrouter.engine.pipeline import EngineConfig

DEFAULT_MODEL = KLEIN_4B.hf_id
CONFIG_FILE = Path("pixelrouter.toml")
# The `[server]` keys of pixelrouter.toml (named like the settings; `db` is `database_url`).
SERVER_KEYS = frozenset(
    {
        "host",
        "port",
        "database_url",
        "demo",
        "model",
        "device",
        "dtype",
        "max_batch_size",
        "fetch_image_urls",
        "allow_private_image_urls",
        "max_body_bytes",
        "request_timeout_s",
        "max_loaded_loras",
        "lora_dir",
        "max_lora_upload_mb",
        "fuse_lora",
    }
)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


@dataclass
class Settings:
    """Everything `pixelrouter serve` can be told. Flags win over the environment."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = field(default_factory=lambda: Path(".pixelrouter"))
    database_url: str | None = field(default=None, repr=False)  # may hold a password
    # PIXELROUTER_ADMIN_KEY; None: generate one at first start. Never in a repr.
    admin_key: str | None = field(default=None, repr=False)
    # [[providers]] of pixelrouter.toml (ProviderConfig); empty: one local engine
    providers: list[Any] = field(default_factory=list)
    # engine
    engine: bool = True  # False: a pure gateway with no local engine
    demo: bool = False
    model: str = DEFAULT_MODEL
    device: str | None = None
    dtype: str | None = None
    max_batch_size: int = 4
    # "full" or "small": klein 4B's architecture with random weights (a load-test target)
    random_weights: str | None = None
    # [[loras]] of pixelrouter.toml: the adapters requests may choose (docs/loras.md)
    loras: LoraRegistry = field(default_factory=LoraRegistry)
    # adapters kept loaded in the pipeline at once (least recently used goes first)
    max_loaded_loras: int = 4
    # where uploaded adapters (POST /api/v1/loras) and their list are kept; None: data_dir/loras
    lora_dir: Path | None = None
    # the largest adapter upload accepted, in MiB (the body as a whole; a 413 beyond it)
    max_lora_upload_mb: int = 512
    # a registered adapter fused into the model at start: then the only one served (a worker
    # for one adapter, docs/loras.md "Fusing")
    fuse_lora: str | None = None
    # limits
    max_body_bytes: int = 64 * 1024 * 1024
    # the whole request body must arrive within this (a client that trickles it gets a 408)
    body_timeout_s: float = 30.0
    request_timeout_s: float = 600.0
    # how long an open circuit (a provider that failed K times in a row) waits before a probe
    circuit_cooldown_s: float = 30.0
    keepalive_interval_s: float = 5.0
    # on SIGTERM: how long generations in flight get to finish before they are cancelled
    drain_timeout_s: float = 30.0
    sweep_interval_s: float = 15.0
    # how long past its request's deadline a reservation or pending record may stay open
    # before the sweeper decides its process is gone
    reservation_grace_s: float = 60.0
    # default per-key rate limit for generation requests (a key's own limit wins); None: none
    rate_limit_requests: int | None = None
    rate_limit_interval_s: int = 60
    # reference images by URL
    fetch_image_urls: bool = False
    allow_private_image_urls: bool = False
    max_image_url_bytes: int = 20 * 1024 * 1024
    image_url_timeout_s: float = 10.0
    # The address clients reach this server at, for the web pages' code samples (None: they
    # show paths only, never a host a request claimed).
    public_url: str | None = None
    # Whether the public web pages show dollars (the fleet's daily spend); off by default.
    public_usage_dollars: bool = False
    # The image store ([storage]; docs/image-store.md): where images asked for by URL are
    # kept (None: <data_dir>/images), how long a signed URL lasts, how long an image is kept,
    # the URL's signing secret (None: one generated into the data dir) and the store's options.
    storage_url: str | None = None
    storage_url_ttl_s: int = 3600
    storage_retention_s: int = 7 * 24 * 3600
    storage_secret: str | None = field(default=None, repr=False)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    # Batches ([batches]; docs/batches.md): the most requests one batch may hold, the items
    # one process runs at once, how long a claim on an item lasts unrenewed (a crashed
    # process's items return to the queue after it), the discount of a batch's images where a
    # provider's price names none (parts per million), and the tries of a webhook.
    batch_max_requests: int = 10_000
    batch_concurrency: int = 8
    batch_lease_s: int = 60
    batch_discount_ppm: int = 0
    batch_webhook_attempts: int = 6

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        settings = cls(
            host=os.environ.get("PIXELROUTER_HOST", "127.0.0.1"),
            port=_env_int("PIXELROUTER_PORT", 8000),
            data_dir=Path(os.environ.get("PIXELROUTER_DATA_DIR", ".pixelrouter")),
            database_url=os.environ.get("PIXELROUTER_DATABASE_URL") or None,
            admin_key=os.environ.get("PIXELROUTER_ADMIN_KEY") or None,
            demo=_env_bool("PIXELROUTER_DEMO", False),
            model=os.environ.get("PIXELROUTER_MODEL", DEFAULT_MODEL),
            device=os.environ.get("PIXELROUTER_DEVICE") or None,
            dtype=os.environ.get("PIXELROUTER_DTYPE") or None,
            max_batch_size=_env_int("PIXELROUTER_MAX_BATCH_SIZE", 4),
            max_loaded_loras=_env_int("PIXELROUTER_MAX_LOADED_LORAS", 4),
            lora_dir=Path(os.environ["PIXELROUTER_LORA_DIR"])
            if os.environ.get("PIXELROUTER_LORA_DIR")
            else None,
            max_lora_upload_mb=_env_int("PIXELROUTER_MAX_LORA_UPLOAD_MB", 512),
            fuse_lora=os.environ.get("PIXELROUTER_FUSE_LORA", "").strip() or None,
            random_weights=os.environ.get("PIXELROUTER_RANDOM_WEIGHTS", "").strip() or None,
            request_timeout_s=float(os.environ.get("PIXELROUTER_REQUEST_TIMEOUT_S") or 600),
            body_timeout_s=float(os.environ.get("PIXELROUTER_BODY_TIMEOUT_S") or 30),
            circuit_cooldown_s=float(os.environ.get("PIXELROUTER_CIRCUIT_COOLDOWN_S") or 30),
            drain_timeout_s=float(os.environ.get("PIXELROUTER_DRAIN_TIMEOUT_S") or 30),
            rate_limit_requests=_env_int("PIXELROUTER_RATE_LIMIT_REQUESTS", 0) or None,
            rate_limit_interval_s=_env_int("PIXELROUTER_RATE_LIMIT_INTERVAL_S", 60),
            sweep_interval_s=float(os.environ.get("PIXELROUTER_SWEEP_INTERVAL_S") or 15),
            reservation_grace_s=float(os.environ.get("PIXELROUTER_RESERVATION_GRACE_S") or 60),
            fetch_image_urls=_env_bool("PIXELROUTER_FETCH_IMAGE_URLS", False),
            allow_private_image_urls=_env_bool("PIXELROUTER_ALLOW_PRIVATE_IMAGE_URLS", False),
            public_url=(os.environ.get("PIXELROUTER_PUBLIC_URL") or "").rstrip("/") or None,
            public_usage_dollars=_env_bool("PIXELROUTER_PUBLIC_USAGE_DOLLARS", False),
            storage_url=os.environ.get("PIXELROUTER_STORAGE_URL") or None,
            storage_url_ttl_s=_env_int("PIXELROUTER_STORAGE_URL_TTL_S", 3600),
            storage_retention_s=_env_int("PIXELROUTER_STORAGE_RETENTION_S", 7 * 24 * 3600),
            storage_secret=os.environ.get("PIXELROUTER_STORAGE_SECRET") or None,
            batch_concurrency=_env_int("PIXELROUTER_BATCH_CONCURRENCY", 8),
            batch_lease_s=_env_int("PIXELROUTER_BATCH_LEASE_S", 60),
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)
        return settings

    @classmethod
    def load(cls, config: Path | None = None, **flags: object) -> Settings:
        """The settings `pixelrouter` runs with: `flags` (None: not given) over the
        `[server]` table of `config` (default: ./pixelrouter.toml when present) over the
        environment; the file's `[[providers]]` become `providers`, its `[[loras]]` `loras`."""
        values = read_config_file(config)
        values.update({k: v for k, v in flags.items() if v is not None})
        settings = cls.from_env(**values)
        fuse = settings.fuse_lora
        spec = settings.loras.get(fuse) if fuse is not None else None
        if fuse is not None and spec is None:
            names = ", ".join(spec.name for spec in settings.loras.specs()) or "none"
            raise ConfigError(
                f"fuse_lora names {fuse!r}, which is not a registered adapter: it must be the "
                f"name of one of the [[loras]] tables (registered: {names})."
            )
        if spec is not None and spec.default_scale == 0:
            raise ConfigError(
                f"fuse_lora names {fuse!r}, whose default_scale is 0: fused at 0 it is the base "
                "model. Give it the scale to fuse it at."
            )
        return settings

    def engine_config(self) -> EngineConfig:
        """The local engine's configuration: these settings over `EngineConfig`'s defaults
        (its speed options, docs/engine.md)."""
        from pixelrouter.engine.pipeline import EngineConfig

        return EngineConfig(
            model=self.model,
            demo=self.demo,
            random_weights=self.random_weights,
            device=self.device,
            dtype=self.dtype,
            max_batch_size=self.max_batch_size,
            loras=self.loras,
            max_loaded_loras=self.max_loaded_loras,
            fuse_lora=self.fuse_lora,
        )

    @property
    def reservation_ttl_s(self) -> float:
        return self.request_timeout_s + self.reservation_grace_s

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.data_dir / "images")

    @property
    def resolved_lora_dir(self) -> Path:
        return self.lora_dir if self.lora_dir is not None else self.data_dir / "loras"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'pixelrouter.db').as_posix()}"


def read_config_file(path: Path | None) -> dict[str, Any]:
    """`pixelrouter.toml`: the `[server]` keys, named like the settings (db → database_url),
    the `[[providers]]` tables as `providers` and the `[[loras]]` as a `LoraRegistry`. No
    file named and none in the working directory: nothing. Raises `ConfigError` saying which
    file and what is wrong."""
    from pixelrouter.providers.config import load_providers

    if path is None:
        if not CONFIG_FILE.exists():
            return {}
        path = CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text())
        providers = load_providers(path)
        loras = parse_lora_tables(data.get("loras"), path.parent)
    except (OSError, tomllib.TOMLDecodeError, ConfigError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    server = dict(data.get("server", {}))
    if "db" in server:
        server["database_url"] = server.pop("db")
    unknown = set(server) - SERVER_KEYS
    if unknown:
        raise ConfigError(f"unknown [server] settings in {path}: {', '.join(unknown)}")
    _at_least_one(server, "max_loaded_loras", f"[server] max_loaded_loras in {path}",
                  "a whole number of at least 1 (adapters kept loaded at once)")  # fmt: skip
    _at_least_one(server, "max_lora_upload_mb", f"[server] max_lora_upload_mb in {path}",
                  "a whole number of MiB of at least 1")  # fmt: skip
    if "lora_dir" in server:
        lora_dir = server["lora_dir"]
        if not isinstance(lora_dir, str) or not lora_dir:
            raise ConfigError(f"[server] lora_dir in {path} must be a directory's path.")
        server["lora_dir"] = path.parent / Path(lora_dir).expanduser()
    fuse = server.get("fuse_lora")
    if fuse is not None and not isinstance(fuse, str):
        raise ConfigError(
            f"[server] fuse_lora in {path} must be the name of one [[loras]] adapter; got {fuse!r}."
        )
    server.update(_storage(data.get("storage"), path))
    server.update(_batches(data.get("batches"), path))
    if providers:
        server["providers"] = providers
    if loras:
        server["loras"] = LoraRegistry(loras)
    return server


def _at_least_one(table: dict[str, Any], key: str, where: str, must_be: str) -> None:
    """`table[key]`, when given, is a whole number of at least 1 (not a bool); else a
    `ConfigError` saying `where` it is and what it `must_be`."""
    value = table.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{where} must be {must_be}; got {value!r}.")


# The `[storage]` keys of pixelrouter.toml, as the settings they set.
STORAGE_KEYS = {
    "url": "storage_url",
    "url_ttl_s": "storage_url_ttl_s",
    "retention_s": "storage_retention_s",
    "options": "storage_options",
}


def _storage(table: Any, path: Path) -> dict[str, Any]:
    """The `[storage]` table as settings (its secret comes from the environment only)."""
    table = _section(table, "storage", STORAGE_KEYS, path, "(the signing secret is read from "
                     "PIXELROUTER_STORAGE_SECRET only)")  # fmt: skip
    for name in ("url_ttl_s", "retention_s"):
        _at_least_one(table, name, f"[storage] {name} in {path}", "a whole number of seconds >= 1")
    if "url" in table and not isinstance(table["url"], str):
        raise ConfigError(f"[storage] url in {path} must be a string")
    if "options" in table and not isinstance(table["options"], dict):
        raise ConfigError(f"[storage] options in {path} must be a table")
    return {STORAGE_KEYS[k]: v for k, v in table.items()}


def _section(
    table: Any, name: str, keys: dict[str, str], path: Path, note: str = ""
) -> dict[str, Any]:
    """A `[name]` table of the file ({} when absent) holding only `keys`, or a `ConfigError`."""
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] in {path} must be a table")
    unknown = set(table) - set(keys)
    if unknown:
        raise ConfigError(
            f"unknown [{name}] settings in {path}: {', '.join(sorted(unknown))} {note}".rstrip()
        )
    return table


# The `[batches]` keys of pixelrouter.toml, as the settings they set.
BATCH_KEYS = {
    "max_requests": "batch_max_requests",
    "concurrency": "batch_concurrency",
    "lease_s": "batch_lease_s",
    "discount": "batch_discount_ppm",
    "webhook_attempts": "batch_webhook_attempts",
}


def _batches(table: Any, path: Path) -> dict[str, Any]:
    """The `[batches]` table as settings."""
    table = _section(table, "batches", BATCH_KEYS, path)
    for name in ("max_requests", "concurrency", "lease_s", "webhook_attempts"):
        _at_least_one(table, name, f"[batches] {name} in {path}", "a whole number of at least 1")
    settings = {BATCH_KEYS[k]: v for k, v in table.items()}
    if "discount" in table:
        settings["batch_discount_ppm"] = share_ppm(
            table["discount"], f"[batches] discount in {path}"
        )
    return settings
