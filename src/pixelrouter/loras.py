"""LoRA adapters as data: the `[[loras]]` of pixelrouter.toml, the registry every edge checks a
request's adapters against, and what the engine found when it checked each one.

No torch here: the engine (`engine/adapters.py`) loads and checks an adapter and records the
outcome in the registry (`LoraCheck`); the edges resolve a request's `loras` with `resolve`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelrouter.catalog import KLEIN_4B, Catalog, ModelEntry, Price, micro_to_usd
from pixelrouter.errors import ConfigError, InvalidRequest, NotFound
from pixelrouter.price_tables import price_table
from pixelrouter.types import LoraChoice

MAX_LORAS_PER_REQUEST = 4
MAX_SCALE = 4.0
# Also the model variant's suffix (`<model id>:<name>`) and diffusers' adapter name.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TABLES = "[[loras]]"
HF_SCHEME = "hf://"  # a file of a Hugging Face repository: hf://owner/repo[/file.safetensors]
HF_REFERENCE = re.compile(r"^hf://([A-Za-z0-9][\w.-]*/[\w.-]+)(?:/([\w./-]+\.safetensors))?$")
LORA_KEYS = frozenset({"name", "path", "models", "default_scale", "price", "description"})


@dataclass(frozen=True)
class LoraSpec:
    """One registered adapter, as the operator described it."""

    name: str
    # a diffusers/PEFT .safetensors file, a directory holding one, or a Hugging Face reference
    # `hf://owner/repo[/file.safetensors]` (`lora_files.local_path`)
    path: str
    models: tuple[str, ...] = (KLEIN_4B.id,)
    default_scale: float = 1.0
    price: Price | None = None  # per image, per megapixel; None: the serving provider's price
    description: str = ""


@dataclass(frozen=True)
class LoraCheck:
    """What loading the adapter into the pipeline showed: accepted with its rank, dtype and
    target modules, or refused with the reason."""

    ok: bool
    reason: str = ""
    rank: int = 0
    dtype: str = ""
    targets: tuple[str, ...] = ()
    parameters: int = 0

    def as_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"status": "refused", "reason": self.reason}
        return {
            "status": "ready",
            "rank": self.rank,
            "dtype": self.dtype,
            "targets": len(self.targets),
            "parameters": self.parameters,
        }


class LoraRegistry:
    """The registered adapters by name and what checking each one found; shared by the edges
    (which read it) and the engine (which records its checks), so it is locked."""

    def __init__(self, specs: Iterable[LoraSpec] = ()) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, LoraSpec] = {}
        self._checks: dict[str, LoraCheck] = {}
        self._fused: LoraChoice | None = None
        for spec in specs:
            self.add(spec)

    def add(self, spec: LoraSpec) -> None:
        with self._lock:
            if spec.name in self._specs:
                raise ConfigError(f"LoRA adapter {spec.name!r} is registered twice.")
            self._specs[spec.name] = spec

    def remove(self, name: str) -> LoraSpec | None:
        """Forget the adapter and its check (an upload deleted); None if it was not here."""
        with self._lock:
            self._checks.pop(name, None)
            return self._specs.pop(name, None)

    def get(self, name: str) -> LoraSpec | None:
        with self._lock:
            return self._specs.get(name)

    def specs(self) -> list[LoraSpec]:
        with self._lock:
            return list(self._specs.values())

    def record(self, name: str, check: LoraCheck) -> None:
        with self._lock:
            self._checks[name] = check

    def check_of(self, name: str) -> LoraCheck | None:
        with self._lock:
            return self._checks.get(name)

    # ------------------------------------------------------------------ one adapter fused

    @property
    def fused(self) -> LoraChoice | None:
        """The adapter the engine fused into the model's weights (`[server] fuse_lora`), at its
        scale: then the only adapter set this server serves."""
        with self._lock:
            return self._fused

    def mark_fused(self, name: str) -> LoraChoice:
        """Record that the engine fused `name` at its default scale: every other adapter is
        refused from now on, with the reason."""
        with self._lock:
            fused = self._fused = LoraChoice(name, self._specs[name].default_scale)
            others = [other for other in self._specs if other != name]
            for other in others:
                self._checks[other] = LoraCheck(ok=False, reason=_fused_only(fused))
        return fused

    def check_served(self, model: str, choices: tuple[LoraChoice, ...]) -> None:
        """The engine's door: every adapter of a request was accepted when registered and, on a
        fused engine, the request is its one adapter set (a 400 otherwise)."""
        for choice in choices:
            check = self.check_of(choice.name)
            if check is None or not check.ok:
                why = f": {check.reason}" if check is not None else " with this engine"
                raise InvalidRequest(f"The LoRA adapter {choice.name!r} is not registered{why}.")
        self.check_fused(model, choices)

    def check_fused(self, model: str, choices: tuple[LoraChoice, ...]) -> None:
        """On a server with a fused adapter, a 400 for any request but `<model>:<adapter>` at the
        fused scale: the base model and other adapters are not in its weights any more."""
        fused = self.fused
        if fused is None or [(c.name, c.scale) for c in choices] == [(fused.name, fused.scale)]:
            return
        asked = ", ".join(f"{c.name} at {c.scale:g}" for c in choices) or "no adapter"
        raise InvalidRequest(
            f"This server serves only {model}:{fused.name} ({_fused_only(fused)}); this request "
            f"asked for {asked}. Ask for the model {model}:{fused.name}, or send requests "
            "without it, or with other adapters or scales, to another server.",
            metadata={"param": "loras", "available": [fused.name]},
        )

    def usable(self, model: str) -> list[LoraSpec]:
        """Adapters for `model` that were not refused (not yet checked counts as usable: the
        engine checks every adapter before it reports ready)."""
        with self._lock:
            return [
                spec
                for spec in self._specs.values()
                if model in spec.models
                and (self._checks.get(spec.name) is None or self._checks[spec.name].ok)
            ]

    def accepted(self, model: str) -> list[LoraSpec]:
        """Adapters for `model` the engine checked and accepted: those a request can be served
        with, so those listed as model variants."""
        with self._lock:
            return [
                spec
                for spec in self._specs.values()
                if model in spec.models
                and (check := self._checks.get(spec.name)) is not None
                and check.ok
            ]

    def variants(self, entry: ModelEntry) -> list[ModelEntry]:
        """The model variants `<model id>:<adapter>` of a catalogue model, one per accepted
        adapter, for the catalogue's listings."""
        return [variant_entry(entry, spec) for spec in self.accepted(entry.id)]

    def describe(self) -> list[dict[str, Any]]:
        """Every registered adapter with what checking it found (`GET /api/v1/loras`,
        `pixelrouter loras list`)."""
        with self._lock:
            fused = self._fused.name if self._fused is not None else None
            return [
                lora_json(spec, self._checks.get(spec.name), fused=spec.name == fused)
                for spec in self._specs.values()
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._specs)

    # ------------------------------------------------------------------ a request's adapters

    def resolve(
        self, model: str, wanted: list[tuple[Any, Any]], field: str
    ) -> tuple[LoraChoice, ...]:
        """A request's `(name, scale)` pairs (scale None: the adapter's default) as choices for
        `model`, or a 400 that says what is wrong and what exists. Scale 0 is checked and then
        dropped: an adapter at 0 is no adapter."""
        if len(wanted) > MAX_LORAS_PER_REQUEST:
            raise InvalidRequest(
                f"{field} holds at most {MAX_LORAS_PER_REQUEST} adapters; got {len(wanted)}.",
                metadata={"param": field},
            )
        seen: set[str] = set()
        choices: list[LoraChoice] = []
        for position, (name, scale) in enumerate(wanted):
            where = f"{field}[{position}]"
            if not isinstance(name, str) or not name:
                raise InvalidRequest(
                    f"{where}.name must be the name of a registered adapter.",
                    metadata={"param": field},
                )
            spec = self._known(model, name, where)
            if name in seen:
                raise InvalidRequest(
                    f"{field} names the adapter {name!r} twice; give each adapter once, with "
                    "one scale.",
                    metadata={"param": field},
                )
            seen.add(name)
            value = spec.default_scale if scale is None else _scale(scale, where)
            if value != 0:
                choices.append(LoraChoice(name, value, spec.price))
        return tuple(choices)

    def _known(self, model: str, name: str, where: str) -> LoraSpec:
        spec = self.get(name)
        usable = ", ".join(s.name for s in self.usable(model)) or "none"
        if spec is None:
            raise InvalidRequest(
                f"{where}: unknown LoRA adapter {name!r}. Adapters for {model}: {usable}.",
                metadata={"param": "loras", "available": [s.name for s in self.usable(model)]},
            )
        if model not in spec.models:
            raise InvalidRequest(
                f"{where}: the adapter {name!r} is registered for {', '.join(spec.models)}, "
                f"not for {model}. Adapters for {model}: {usable}.",
                metadata={"param": "loras", "available": [s.name for s in self.usable(model)]},
            )
        check = self.check_of(name)
        if check is not None and not check.ok:
            raise InvalidRequest(
                f"{where}: the adapter {name!r} was refused when it was registered "
                f"({check.reason}). Adapters for {model}: {usable}.",
                metadata={"param": "loras", "available": [s.name for s in self.usable(model)]},
            )
        return spec

    def split_variant(self, catalog: Catalog, model: str) -> tuple[str, LoraSpec | None]:
        """`<model id>:<adapter>` → (model id, the adapter); any other id → (id, None). A
        variant of an adapter that does not exist is a 404 naming the model's adapters."""
        base, sep, name = model.rpartition(":")
        if not sep or "/" not in base:
            return model, None
        entry = catalog.get(base)
        spec = self.get(name)
        if spec is None or entry.id not in spec.models:
            usable = ", ".join(f"{entry.id}:{s.name}" for s in self.usable(entry.id)) or "none"
            raise NotFound(
                f"Model {model!r} is not served here: {name!r} is no adapter of {entry.id}. "
                f"Variants: {usable}.",
                metadata={"reason": "model_not_found"},
            )
        return entry.id, spec


def _fused_only(fused: LoraChoice) -> str:
    return (
        f"the LoRA adapter {fused.name!r} is fused into its weights at scale {fused.scale:g}, "
        "so it makes nothing else"
    )


def lora_json(spec: LoraSpec, check: LoraCheck | None, fused: bool = False) -> dict[str, Any]:
    """An adapter as listed: what the operator registered, and `status` ready (checked and
    accepted: `rank` and `dtype` known), refused (with the `reason`) or unchecked (no engine
    here has checked it, or it has not yet); `fused` when the engine fused it into the model
    (then the only adapter served, at its `default_scale`)."""
    status = "unchecked" if check is None else ("ready" if check.ok else "refused")
    ready = check if check is not None and check.ok else None
    return {
        "name": spec.name,
        "models": list(spec.models),
        "default_scale": spec.default_scale,
        "price": None
        if spec.price is None
        else {
            "first_mp": micro_to_usd(spec.price.first_mp),
            "extra_mp": micro_to_usd(spec.price.extra_mp),
        },
        "description": spec.description,
        "rank": ready.rank if ready else None,
        "dtype": ready.dtype if ready else None,
        "status": status,
        "reason": check.reason if check is not None and not check.ok else None,
        "fused": fused,
    }


def variant_entry(entry: ModelEntry, spec: LoraSpec) -> ModelEntry:
    """The model variant `<model id>:<adapter>`: the base model with the adapter's description
    and price (the adapter's override, else the model's)."""
    return dataclasses.replace(
        entry,
        id=f"{entry.id}:{spec.name}",
        canonical_slug=f"{entry.canonical_slug}:{spec.name}",
        name=f"{entry.name} + {spec.name}",
        description=spec.description
        or f"{entry.name} with the LoRA adapter {spec.name!r} at scale {spec.default_scale:g}.",
        price=spec.price or entry.price,
        aliases=(),
        base_id=entry.id,
    )


def _scale(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(
            f"{where}.scale must be a number between -{MAX_SCALE:g} and {MAX_SCALE:g}; "
            f"got {value!r}.",
            metadata={"param": "loras"},
        )
    if not -MAX_SCALE <= value <= MAX_SCALE:
        raise InvalidRequest(
            f"{where}.scale must be between -{MAX_SCALE:g} and {MAX_SCALE:g}; got {value:g}.",
            metadata={"param": "loras"},
        )
    return float(value)


# ---------------------------------------------------------------------- pixelrouter.toml


def parse_lora_tables(
    tables: Any, base_dir: Path, catalog: Catalog | None = None, *, source: str = TABLES
) -> list[LoraSpec]:
    """The `[[loras]]` tables of a config file, each checked as data (the engine checks the
    weights); relative paths are relative to the file, `hf://` references are kept as they are.
    Raises `ConfigError` naming the table. An upload's fields go through the same checks as a
    one-table list, with `source` naming it in the messages ("LoRA upload")."""
    if tables is None:
        return []
    if not isinstance(tables, list):
        raise ConfigError("'loras' must be an array of tables: write [[loras]] for each adapter.")
    catalog = catalog or Catalog()
    specs: list[LoraSpec] = []
    names: set[str] = set()
    for index, table in enumerate(tables):
        where = f"{source} #{index + 1}" if source == TABLES else source
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table.")
        name = table.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ConfigError(
                f"{where}: 'name' must be 1-64 lower-case letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit (it becomes the model variant "
                f"'<model>:<name>'); got {name!r}."
            )
        where = f"{source} {name!r}"
        unknown = sorted(set(table) - LORA_KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; the keys are "
                f"{', '.join(sorted(LORA_KEYS))}."
            )
        if name in names:
            raise ConfigError(f"{where} is defined twice; adapter names must be unique.")
        names.add(name)
        path = table.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(
                f"{where}: 'path' must name a diffusers/PEFT .safetensors file or a directory "
                "holding pytorch_lora_weights.safetensors."
            )
        if path.startswith(HF_SCHEME):
            if not HF_REFERENCE.match(path) or ".." in path:
                raise ConfigError(
                    f"{where}: a Hugging Face reference is hf://owner/repo (its "
                    "pytorch_lora_weights.safetensors) or hf://owner/repo/file.safetensors; "
                    f"got {path!r}."
                )
            resolved = path
        else:
            local = Path(path).expanduser()
            resolved = str(local if local.is_absolute() else base_dir / local)
        scale = table.get("default_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ConfigError(f"{where}: 'default_scale' must be a number; got {scale!r}.")
        if not -MAX_SCALE <= scale <= MAX_SCALE:
            raise ConfigError(
                f"{where}: 'default_scale' must be between -{MAX_SCALE:g} and {MAX_SCALE:g}; "
                f"got {scale:g}."
            )
        description = table.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{where}: 'description' must be a string.")
        specs.append(
            LoraSpec(
                name=name,
                path=resolved,
                models=_models(table.get("models"), where, catalog),
                default_scale=float(scale),
                price=_price(table.get("price"), where),
                description=description,
            )
        )
    return specs


def _models(value: Any, where: str, catalog: Catalog) -> tuple[str, ...]:
    if value is None:
        return (catalog.default.id,)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise ConfigError(f"{where}: 'models' must be a list of model ids.")
    models: list[str] = []
    for model in value:
        try:
            canonical = catalog.get(model).id
        except NotFound:
            known = ", ".join(m.id for m in catalog.models)
            raise ConfigError(
                f"{where}: model {model!r} is not in the catalogue; known models: {known}."
            ) from None
        if canonical not in models:
            models.append(canonical)
    return tuple(models)


def _price(value: Any, where: str) -> Price | None:
    """An adapter's own price: USD for an image's first megapixel and each further one."""
    return None if value is None else price_table(value, where, ("first_mp", "extra_mp"))
