"""`[[loras]]` in pixelrouter.toml: parsed into the registry, every mistake a ConfigError that
names the table and says what to write."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelrouter.catalog import Price
from pixelrouter.config import Settings
from pixelrouter.errors import ConfigError
from pixelrouter.loras import LoraRegistry, LoraSpec

GOOD = """
[server]
max_loaded_loras = 2

[[loras]]
name = "ink-wash"
path = "adapters/ink"
default_scale = 0.8
price = { first_mp = 0.02, extra_mp = 0.002 }
description = "ink wash painting"

[[loras]]
name = "glass"
path = "/srv/loras/glass.safetensors"
models = ["black-forest-labs/FLUX.2-klein-4B"]
"""


def _load(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "pixelrouter.toml"
    config.write_text(text)
    return Settings.load(config)


def test_adapters_are_read_into_the_registry(tmp_path: Path) -> None:
    settings = _load(tmp_path, GOOD)
    assert settings.max_loaded_loras == 2
    ink = settings.loras.get("ink-wash")
    assert ink is not None and ink.path == str(tmp_path / "adapters/ink")  # relative to the file
    assert ink.default_scale == 0.8 and ink.description == "ink wash painting"
    assert ink.price == Price(first_mp=20_000, extra_mp=2_000)
    assert ink.models == ("black-forest-labs/flux.2-klein-4b",)
    glass = settings.loras.get("glass")
    assert glass is not None and glass.price is None
    assert glass.models == ("black-forest-labs/flux.2-klein-4b",)  # the HF id, canonical
    engine = settings.engine_config()
    assert engine.loras is settings.loras and engine.max_loaded_loras == 2


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ('path = "x"', "'name' must be 1-64 lower-case letters"),
        ('name = "Big Name"\npath = "x"', "'name' must be 1-64 lower-case letters"),
        ('name = "a"', "'path' must name a diffusers/PEFT .safetensors file"),
        ('name = "a"\npath = "x"\nstrength = 1', "unknown key(s) strength"),
        ('name = "a"\npath = "x"\ndefault_scale = 9', "'default_scale' must be between -4 and 4"),
        ('name = "a"\npath = "x"\ndefault_scale = "high"', "'default_scale' must be a number"),
        ('name = "a"\npath = "x"\nmodels = ["nobody/model"]', "model 'nobody/model' is not in"),
        ('name = "a"\npath = "x"\nprice = 0.02', "'price' must be a table such as"),
        ('name = "a"\npath = "x"\nprice = { extra_mp = 0.001 }', "price needs first_mp"),
        ('name = "a"\npath = "x"\nprice = { first_mp = -1 }', "price.first_mp must be a non-neg"),
        ('name = "a"\npath = "x"\nprice = { per_image = 1 }', "unknown price key(s) per_image"),
    ],
)
def test_mistakes_are_config_errors_that_say_what_to_write(
    tmp_path: Path, table: str, says: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, f"[[loras]]\n{table}\n")
    assert says in str(raised.value) and "[[loras]]" in str(raised.value)


def test_a_name_twice_and_a_bad_loaded_count_are_refused(tmp_path: Path) -> None:
    twice = '[[loras]]\nname = "a"\npath = "x"\n[[loras]]\nname = "a"\npath = "y"\n'
    with pytest.raises(ConfigError, match="defined twice"):
        _load(tmp_path, twice)
    with pytest.raises(ConfigError, match="max_loaded_loras .* at least 1"):
        _load(tmp_path, "[server]\nmax_loaded_loras = 0\n")


def test_only_adapters_accepted_at_registration_become_model_variants() -> None:
    from pixelrouter.catalog import KLEIN_4B
    from pixelrouter.loras import LoraCheck

    registry = LoraRegistry(
        [
            LoraSpec("ok", "a", description="fine"),
            LoraSpec("bad", "b"),
            LoraSpec("unchecked", "c"),
            LoraSpec("priced", "d", price=Price(first_mp=1, extra_mp=2)),
        ]
    )
    registry.record("ok", LoraCheck(ok=True))
    registry.record("bad", LoraCheck(ok=False, reason="corrupt"))
    registry.record("priced", LoraCheck(ok=True))
    variants = registry.variants(KLEIN_4B)
    assert [v.id for v in variants] == [f"{KLEIN_4B.id}:ok", f"{KLEIN_4B.id}:priced"]
    assert variants[0].description == "fine" and variants[0].price == KLEIN_4B.price
    assert variants[1].price == Price(first_mp=1, extra_mp=2)
    assert all(v.base_id == KLEIN_4B.id and not v.aliases for v in variants)


def test_fuse_lora_names_a_registered_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIXELROUTER_FUSE_LORA", raising=False)
    settings = _load(tmp_path, GOOD.replace("max_loaded_loras = 2", 'fuse_lora = "glass"'))
    assert settings.fuse_lora == "glass" and settings.engine_config().fuse_lora == "glass"
    assert _load(tmp_path, GOOD).engine_config().fuse_lora is None
    # The environment names it when the file does not (the file wins, as for every setting).
    monkeypatch.setenv("PIXELROUTER_FUSE_LORA", "ink-wash")
    assert _load(tmp_path, GOOD).fuse_lora == "ink-wash"
    with_file = GOOD.replace("max_loaded_loras = 2", 'fuse_lora = "glass"')
    assert _load(tmp_path, with_file).fuse_lora == "glass"


def test_fuse_lora_of_no_registered_adapter_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIXELROUTER_FUSE_LORA", raising=False)
    unknown = GOOD.replace("max_loaded_loras = 2", 'fuse_lora = "oil"')
    with pytest.raises(ConfigError, match=r"fuse_lora names 'oil'.*registered: ink-wash, glass"):
        _load(tmp_path, unknown)
    with pytest.raises(ConfigError, match="fuse_lora .* must be the name of one"):
        _load(tmp_path, GOOD.replace("max_loaded_loras = 2", "fuse_lora = 1"))
    zero = GOOD.replace("max_loaded_loras = 2", 'fuse_lora = "ink-wash"')
    with pytest.raises(ConfigError, match="default_scale is 0: fused at 0 it is the base model"):
        _load(tmp_path, zero.replace("default_scale = 0.8", "default_scale = 0"))
    monkeypatch.setenv("PIXELROUTER_FUSE_LORA", "oil")
    with pytest.raises(ConfigError, match="fuse_lora names 'oil'"):
        _load(tmp_path, "[server]\nport = 9000\n")
