"""Providers as data: the `[[providers]]` tables of `pixelrouter.toml`, validated.

```toml
[[providers]]
name = "worker-a"                 # slug used in provider.order / only / ignore
display_name = "Worker A"
type = "pixelrouter"              # local | pixelrouter | openrouter | openai-images | bfl
url = "http://gpu-worker-1:8000/api/v1"
api_key = "env:WORKER_A_KEY"      # or "file:/run/secrets/worker-a"; never the key itself
models = ["black-forest-labs/flux.2-klein-4b"]
price = { first_mp = 0.014, extra_mp = 0.001 }   # USD, converted to integer micro-dollars
data_collection = "deny"
zdr = true                        # zero data retention (default: true for local, else false)
quantization = "bf16"             # what the provider runs (shown; provider.quantizations)
timeouts = { connect_s = 2, first_byte_s = 60, total_s = 120 }
```

Secrets are read from the environment or a file when the configuration is loaded, so a
config file can be shared or committed without leaking a key; a literal key is refused.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pixelrouter.catalog import KLEIN_4B, Catalog, Price
from pixelrouter.errors import ConfigError, NotFound
from pixelrouter.price_tables import price_table
from pixelrouter.providers.base import ProviderInfo

ProviderType = Literal["local", "pixelrouter", "openrouter", "openai-images", "bfl"]
PROVIDER_TYPES: tuple[str, ...] = ("local", "pixelrouter", "openrouter", "openai-images", "bfl")
KNOWN_KEYS = (
    "name",
    "display_name",
    "type",
    "url",
    "api_key",
    "models",
    "price",
    "data_collection",
    "zdr",
    "quantization",
    "timeouts",
    "upstream_model",
    "discovery",
    "max_queue",
    "options",
)
SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

SECRET_HEADERS = ("authorization", "x-key", "x-api-key", "api-key", "proxy-authorization")

# `options` each protocol understands, with the type of each value.
_HTTP_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "supported_parameters": list,  # overrides the protocol's declared parameters
    "headers": dict,  # extra request headers, e.g. OpenRouter's HTTP-Referer / X-Title
    "quantization": str,  # the same as the provider's top-level `quantization` (older form)
    "max_response_bytes": int,
    "probe_path": str,  # path under `url` that `probe()` GETs
    # Trust the provider to answer with image URLs on private addresses (an internal CDN);
    # otherwise only its own origin may be private.
    "private_image_urls": bool,
}
OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "local": {},
    "pixelrouter": _HTTP_OPTIONS,
    "openrouter": _HTTP_OPTIONS,
    "openai-images": {**_HTTP_OPTIONS, "batch_n": bool, "extensions": bool, "edits": bool},
    "bfl": {
        **_HTTP_OPTIONS,
        "poll_initial_s": (int, float),
        "poll_max_s": (int, float),
        "safety_tolerance": int,
    },
}


@dataclass(frozen=True)
class Timeouts:
    """Per-attempt limits: TCP connect, wait for the first byte (and between reads), whole
    attempt (for `bfl`: submit, every poll and the download together)."""

    connect_s: float = 2.0
    first_byte_s: float = 60.0
    total_s: float = 120.0


@dataclass(frozen=True)
class Discovery:
    """`discovery = "dns"`: the url's host names many workers, one per address
    (`providers/discovery.py`). `nameserver` ("host:port"): ask that server, not the system's
    resolver (a Consul agent, a test)."""

    type: Literal["dns"] = "dns"
    interval_s: float = 5.0
    nameserver: tuple[str, int] | None = None


@dataclass(frozen=True)
class ProviderConfig:
    """One configured provider. `api_key` is the resolved secret and never shown in `repr`."""

    name: str
    type: ProviderType
    display_name: str = ""
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = (KLEIN_4B.id,)
    price: Price = KLEIN_4B.price
    data_collection: Literal["allow", "deny"] = "deny"
    timeouts: Timeouts = field(default_factory=Timeouts)
    upstream_model: str | None = None  # None: derived per model, see `upstream_model_for`
    max_queue: int | None = None
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    zdr: bool | None = None  # None: true for a local provider, else false
    quantization: str | None = None  # None: `options.quantization`, or the engine's dtype
    discovery: Discovery | None = None  # `pixelrouter` only: workers found by DNS

    @property
    def zero_data_retention(self) -> bool:
        return self.type == "local" if self.zdr is None else self.zdr

    def __post_init__(self) -> None:
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    def upstream_model_for(self, model: str) -> str:
        """The model name sent upstream for one of our model ids.

        An explicit `upstream_model` wins. Otherwise: `pixelrouter` and `openrouter` speak our
        ids; `openai-images` servers (SGLang, vLLM-Omni) name the model by its Hugging Face id;
        BFL's endpoint path is the slug with dots as dashes (`flux-2-klein-4b`).
        """
        if self.upstream_model:
            return self.upstream_model
        if self.type == "openai-images":
            try:
                return Catalog().get(model).hf_id
            except NotFound:
                return model
        if self.type == "bfl":
            return model.rsplit("/", 1)[-1].lower().replace(".", "-")
        return model

    def info(self, kind: str, declared_parameters: tuple[str, ...]) -> ProviderInfo:
        """The provider as routing and the catalogue see it. `options.supported_parameters`
        overrides what its protocol declares."""
        parameters = self.options.get("supported_parameters")
        return ProviderInfo(
            slug=self.name,
            display_name=self.display_name,
            models=self.models,
            price=self.price,
            kind=kind,
            quantization=self.quantization or self.options.get("quantization"),
            data_collection=self.data_collection,
            zdr=self.zero_data_retention,
            supported_parameters=(
                tuple(parameters) if parameters is not None else declared_parameters
            ),
        )


# ------------------------------------------------------------------------------- loading


def load_providers(source: str | Path) -> list[ProviderConfig]:
    """Read the `[[providers]]` tables of a TOML file (a `Path`, or a `str` naming a file) or
    of TOML text (a `str` holding a table). Raises `ConfigError` with an actionable message."""
    text, label, base_dir = _read_source(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: not valid TOML: {exc}") from exc
    tables = data.get("providers", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(
            f"{label}: 'providers' must be an array of tables, written [[providers]]."
        )
    configs: list[ProviderConfig] = []
    seen: dict[str, int] = {}
    for position, table in enumerate(tables, start=1):
        config = parse_provider(table, where=f"{label}: provider {position}", base_dir=base_dir)
        if config.name in seen:
            raise ConfigError(
                f"{label}: provider {position}: the name {config.name!r} is already used by "
                f"provider {seen[config.name]}; names must be unique (they are the slugs of "
                "provider.order / only / ignore)."
            )
        seen[config.name] = position
        configs.append(config)
    return configs


def _read_source(source: str | Path) -> tuple[str, str, Path | None]:
    if isinstance(source, str) and (
        "\n" in source or "=" in source or source.lstrip().startswith("[") or not source.strip()
    ):
        return source, "provider configuration", None
    path = Path(source)
    try:
        return path.read_text(encoding="utf-8"), str(path), path.parent
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from exc


def parse_provider(
    table: dict[str, Any], *, where: str = "provider", base_dir: Path | None = None
) -> ProviderConfig:
    """One `[[providers]]` table into a `ProviderConfig` (secrets resolved)."""
    name = table.get("name")
    if not isinstance(name, str) or not SLUG.match(name):
        raise ConfigError(
            f"{where}: 'name' must be a slug of lowercase letters, digits, '-' and '_' "
            f"(such as 'worker-a'); got {name!r}."
        )
    where = f"{where} ({name!r})"
    unknown = sorted(set(table) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; the keys of a provider are "
            f"{', '.join(KNOWN_KEYS)}."
        )
    kind = table.get("type")
    if kind not in PROVIDER_TYPES:
        raise ConfigError(
            f"{where}: unknown type {kind!r}; use one of {', '.join(PROVIDER_TYPES)}."
        )
    display_name = table.get("display_name", name)
    if not isinstance(display_name, str) or not display_name.strip():
        raise ConfigError(f"{where}: 'display_name' must be a non-empty string.")
    return ProviderConfig(
        name=name,
        type=kind,
        display_name=display_name.strip(),
        url=_url(table.get("url"), kind, where),
        api_key=_secret(table.get("api_key"), where, base_dir),
        models=_models(table.get("models"), where),
        price=_price(table.get("price"), where),
        data_collection=_data_collection(table.get("data_collection", "deny"), where),
        timeouts=_timeouts(table.get("timeouts"), where),
        upstream_model=_optional_str(table.get("upstream_model"), "upstream_model", where),
        max_queue=_max_queue(table.get("max_queue"), where),
        options=_options(table.get("options"), kind, where),
        zdr=_optional_bool(table.get("zdr"), "zdr", where),
        quantization=_quantization(table.get("quantization"), where),
        discovery=_discovery(table.get("discovery"), kind, where),
    )


def _discovery(value: Any, kind: str, where: str) -> Discovery | None:
    if value is None:
        return None
    if kind != "pixelrouter":
        raise ConfigError(f"{where}: 'discovery' is for type 'pixelrouter' (workers) only.")
    table = {"type": value} if isinstance(value, str) else value
    if not isinstance(table, dict) or table.get("type", "dns") != "dns":
        raise ConfigError(
            f"{where}: 'discovery' must be \"dns\" or a table such as "
            '{ type = "dns", interval_s = 5, nameserver = "10.0.0.10:53" }.'
        )
    unknown = sorted(set(table) - {"type", "interval_s", "nameserver"})
    if unknown:
        raise ConfigError(f"{where}: unknown discovery key(s) {', '.join(unknown)}.")
    interval = table.get("interval_s", 5.0)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError(f"{where}: discovery.interval_s must be a positive number of seconds.")
    server = table.get("nameserver")
    nameserver = None
    if server is not None:
        host, _, port = str(server).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f'{where}: discovery.nameserver must be "address:port".')
        nameserver = (host.strip("[]"), int(port))
    return Discovery(interval_s=float(interval), nameserver=nameserver)


def _url(value: Any, kind: str, where: str) -> str | None:
    if value is None:
        if kind == "local":
            return None
        raise ConfigError(
            f"{where}: type {kind!r} needs a 'url', such as "
            f"{_EXAMPLE_URLS.get(kind, 'http://host:port/v1')!r}."
        )
    if kind == "local":
        raise ConfigError(f"{where}: a 'local' provider is this process's engine: remove 'url'.")
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: 'url' must start with http:// or https://; got {value!r}.")
    return value.rstrip("/")


_EXAMPLE_URLS = {
    "pixelrouter": "http://gpu-worker-1:8000/api/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "openai-images": "http://sglang-host:30000/v1",
    "bfl": "https://api.bfl.ai/v1",
}


def _secret(value: Any, where: str, base_dir: Path | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: 'api_key' must be a string such as \"env:NAME\".")
    if value.startswith("env:"):
        variable = value[4:].strip()
        if not variable:
            raise ConfigError(f"{where}: 'api_key = \"env:\"' names no environment variable.")
        secret = os.environ.get(variable, "").strip()
        if not secret:
            raise ConfigError(
                f"{where}: api_key comes from the environment variable {variable}, which is not "
                "set (or empty)."
            )
        return secret
    if value.startswith("file:"):
        path = Path(value[5:].strip()).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read the api_key file {path}: {exc.strerror}."
            ) from exc
        if not secret:
            raise ConfigError(f"{where}: the api_key file {path} is empty.")
        return secret
    raise ConfigError(
        f"{where}: 'api_key' holds a literal key, which a config file must not: put the key in "
        'the environment and write api_key = "env:NAME", or in a file and write '
        'api_key = "file:/path/to/key".'
    )


def _models(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return (KLEIN_4B.id,)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(m, str) and m.strip() for m in value)
    ):
        raise ConfigError(
            f"{where}: 'models' must be a non-empty list of model ids, such as [\"{KLEIN_4B.id}\"]."
        )
    catalog = Catalog()
    models: list[str] = []
    for model in value:
        try:
            canonical = catalog.get(model).id  # the Hugging Face id becomes our id
        except NotFound:
            canonical = model.strip()  # another pixelrouter's model: the catalogue is data
        if canonical not in models:
            models.append(canonical)
    return tuple(models)


def _price(value: Any, where: str) -> Price:
    return KLEIN_4B.price if value is None else price_table(value, where)


def _data_collection(value: Any, where: str) -> Literal["allow", "deny"]:
    if value == "allow":
        return "allow"
    if value == "deny":
        return "deny"
    raise ConfigError(f'{where}: \'data_collection\' must be "allow" or "deny"; got {value!r}.')


def _timeouts(value: Any, where: str) -> Timeouts:
    if value is None:
        return Timeouts()
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: 'timeouts' must be a table such as "
            "{ connect_s = 2, first_byte_s = 60, total_s = 120 }."
        )
    known = ("connect_s", "first_byte_s", "total_s")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown timeout key(s) {', '.join(unknown)}; use {', '.join(known)}."
        )
    seconds: dict[str, float] = {}
    for key in known:
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                raise ConfigError(
                    f"{where}: timeouts.{key} must be a positive number of seconds; got {number!r}."
                )
            seconds[key] = float(number)
    return Timeouts(**seconds)


def _optional_str(value: Any, key: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string.")
    return value.strip()


def _optional_bool(value: Any, key: str, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: '{key}' must be true or false; got {value!r}.")


# OpenRouter's list, which `provider.quantizations` names.
QUANTIZATIONS: tuple[str, ...] = (
    "int4",
    "int8",
    "fp4",
    "mxfp4",
    "nvfp4",
    "fp6",
    "fp8",
    "mxfp8",
    "fp16",
    "bf16",
    "fp32",
    "unknown",
)


def _quantization(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().lower() not in QUANTIZATIONS:
        raise ConfigError(
            f"{where}: 'quantization' must be one of {', '.join(QUANTIZATIONS)}; got {value!r}."
        )
    return value.strip().lower()


def _max_queue(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: 'max_queue' must be a positive integer; got {value!r}.")
    return value


def _options(value: Any, kind: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'options' must be a table.")
    known = OPTIONS[kind]
    for key, option in value.items():
        if key not in known:
            names = ", ".join(known) or "none"
            raise ConfigError(
                f"{where}: unknown option {key!r} for type {kind!r}; its options are: {names}."
            )
        expected = known[key]
        if isinstance(option, bool) and expected is not bool:
            ok = False  # TOML true is not a number
        else:
            ok = isinstance(option, expected)
        if ok and isinstance(option, int | float) and not isinstance(option, bool):
            ok = option > 0 or key == "safety_tolerance" and option == 0
        if ok and key == "supported_parameters":
            ok = all(isinstance(p, str) for p in option)
        if ok and key == "headers":
            ok = all(isinstance(v, str) for v in option.values())
            secret = sorted(h for h in option if h.lower() in SECRET_HEADERS)
            if secret:
                raise ConfigError(
                    f"{where}: options.headers must not carry credentials ({', '.join(secret)}):"
                    ' use api_key = "env:NAME" or "file:/path"; the protocol sends it.'
                )
        if not ok:
            raise ConfigError(f"{where}: options.{key} has the wrong type or value: {option!r}.")
    return dict(value)
