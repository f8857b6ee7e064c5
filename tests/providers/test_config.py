"""`[[providers]]` tables: parsing, secrets from the environment or a file, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pixelrouter.catalog import KLEIN_4B, Price
from pixelrouter.config import Settings
from pixelrouter.errors import ConfigError
from pixelrouter.providers import build_provider, build_providers
from pixelrouter.providers.base import Provider
from pixelrouter.providers.bfl import BFLProvider
from pixelrouter.providers.config import ProviderConfig, Timeouts, load_providers
from pixelrouter.providers.openai_images import OpenAIImagesProvider
from pixelrouter.providers.openrouter import OpenRouterProvider
from pixelrouter.providers.pixelrouter import PixelrouterProvider

ISSUE_EXAMPLE = """
[[providers]]
name = "worker-a"                 # slug used in provider.order/only/ignore
display_name = "Worker A"
type = "pixelrouter"
url = "http://gpu-worker-1:8000/api/v1/"
api_key = "env:WORKER_A_KEY"
models = ["black-forest-labs/flux.2-klein-4b"]
price = { first_mp = 0.014, extra_mp = 0.001 }
data_collection = "deny"
timeouts = { connect_s = 2, first_byte_s = 60, total_s = 120 }
"""

SECRET = "sk-upstream-0123456789abcdef"


def test_the_issue_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_A_KEY", f"  {SECRET}\n")
    (config,) = load_providers(ISSUE_EXAMPLE)
    assert config.name == "worker-a" and config.display_name == "Worker A"
    assert config.type == "pixelrouter"
    assert config.url == "http://gpu-worker-1:8000/api/v1"
    assert config.api_key == SECRET
    assert config.models == (KLEIN_4B.id,)
    assert config.price == Price(first_mp=14_000, extra_mp=1_000)
    assert config.data_collection == "deny"
    assert config.timeouts == Timeouts(connect_s=2.0, first_byte_s=60.0, total_s=120.0)
    assert SECRET not in repr(config)


def test_defaults() -> None:
    (config,) = load_providers('[[providers]]\nname = "box"\ntype = "local"\n')
    assert config == ProviderConfig(name="box", type="local")
    assert config.display_name == "box" and config.url is None and config.api_key is None
    assert config.models == (KLEIN_4B.id,) and config.price == KLEIN_4B.price
    assert config.data_collection == "deny" and config.timeouts == Timeouts()


def test_prices_become_integer_micro_dollars() -> None:
    (config,) = load_providers(
        '[[providers]]\nname = "p"\ntype = "bfl"\nurl = "https://api.bfl.ai/v1"\n'
        "price = { first_mp = 0.0155, extra_mp = 0.0011, input_mp = 0.003 }\n"
    )
    assert config.price == Price(first_mp=15_500, extra_mp=1_100, input_mp=3_000)
    assert config.price.batch_discount_ppm is None  # the server's [batches] discount applies
    amounts = [v for k, v in vars(config.price).items() if k != "batch_discount_ppm"]
    assert all(isinstance(v, int) for v in amounts)
    (discounted,) = load_providers(
        '[[providers]]\nname = "p"\ntype = "bfl"\nurl = "https://api.bfl.ai/v1"\n'
        "price = { first_mp = 0.014, batch_discount = 0.5 }\n"
    )
    assert discounted.price.batch_discount_ppm == 500_000


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "true", '"half"'])
def test_a_batch_discount_is_a_share(value: str) -> None:
    with pytest.raises(ConfigError, match="batch_discount must be a number from 0 to 1"):
        load_providers(
            '[[providers]]\nname = "p"\ntype = "bfl"\nurl = "https://api.bfl.ai/v1"\n'
            f"price = {{ first_mp = 0.014, batch_discount = {value} }}\n"
        )


def test_an_infinite_price_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="price.first_mp must be a non-negative number"):
        load_providers(
            '[[providers]]\nname = "p"\ntype = "bfl"\nurl = "https://api.bfl.ai/v1"\n'
            "price = { first_mp = inf }\n"
        )


def test_secret_from_a_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "bfl.key").write_text(f"\n{SECRET}  \n")
    config_file = tmp_path / "pixelrouter.toml"
    config_file.write_text(
        '[[providers]]\nname = "bfl"\ntype = "bfl"\nurl = "https://api.bfl.ai/v1"\n'
        'api_key = "file:secrets/bfl.key"\n'
    )
    (config,) = load_providers(config_file)
    assert config.api_key == SECRET
    (again,) = load_providers(str(config_file))  # a str naming the file works too
    assert again == config


def test_secret_from_an_absolute_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET)
    (config,) = load_providers(
        f'[[providers]]\nname = "o"\ntype = "openrouter"\nurl = "https://openrouter.ai/api/v1"\n'
        f'api_key = "file:{key_file}"\n'
    )
    assert config.api_key == SECRET


def test_upstream_model_defaults_per_protocol() -> None:
    def made(kind: str, **extra: str) -> ProviderConfig:
        return ProviderConfig(name="x", type=kind, url="http://h/v1", **extra)  # type: ignore[arg-type]

    assert made("pixelrouter").upstream_model_for(KLEIN_4B.id) == KLEIN_4B.id
    assert made("openrouter").upstream_model_for(KLEIN_4B.id) == KLEIN_4B.id
    assert made("openai-images").upstream_model_for(KLEIN_4B.id) == KLEIN_4B.hf_id
    assert made("openai-images").upstream_model_for("acme/other") == "acme/other"
    assert made("bfl").upstream_model_for(KLEIN_4B.id) == "flux-2-klein-4b"
    assert made("bfl").upstream_model_for("black-forest-labs/flux.2-klein-9b") == "flux-2-klein-9b"
    assert made("bfl", upstream_model="flux-2-pro").upstream_model_for(KLEIN_4B.id) == "flux-2-pro"


def test_model_aliases_become_our_ids() -> None:
    (config,) = load_providers(
        '[[providers]]\nname = "s"\ntype = "openai-images"\nurl = "http://s:30000/v1"\n'
        'models = ["black-forest-labs/FLUX.2-klein-4B", "acme/other-model"]\n'
    )
    assert config.models == (KLEIN_4B.id, "acme/other-model")


def test_several_providers_and_an_empty_file(tmp_path: Path) -> None:
    text = ISSUE_EXAMPLE.replace('api_key = "env:WORKER_A_KEY"\n', "") + (
        '\n[[providers]]\nname = "local"\ntype = "local"\n'
    )
    assert [c.name for c in load_providers(text)] == ["worker-a", "local"]
    assert load_providers("") == []
    empty = tmp_path / "empty.toml"
    empty.write_text("[server]\nport = 8000\n")
    assert load_providers(empty) == []


BASE = '[[providers]]\nname = "w"\ntype = "pixelrouter"\nurl = "http://w:8000/api/v1"\n'


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (BASE.replace('"pixelrouter"', '"replicate"'), "unknown type 'replicate'"),
        ('[[providers]]\nname = "w"\ntype = "bfl"\n', "needs a 'url'"),
        ('[[providers]]\nname = "l"\ntype = "local"\nurl = "http://x"\n', "remove 'url'"),
        (BASE.replace("http://w:8000", "ftp://w"), "must start with http"),
        (BASE + BASE, "already used by provider 1"),
        (BASE.replace('"w"', '"Worker A"'), "'name' must be a slug"),
        (BASE + "colour = 'red'\n", "unknown key(s) colour"),
        (BASE + "price = { first_mp = -1 }\n", "price.first_mp must be a non-negative"),
        (BASE + "price = { first_mp = '0.01' }\n", "price.first_mp must be a non-negative"),
        (BASE + "price = { extra_mp = 0.001 }\n", "price needs first_mp"),
        (BASE + "price = { first_mp = 0.01, per_image = 1 }\n", "unknown price key(s) per_image"),
        (BASE + "price = 0.014\n", "'price' must be a table"),
        (BASE + "timeouts = { total_s = 0 }\n", "timeouts.total_s must be a positive"),
        (BASE + "timeouts = { read_s = 5 }\n", "unknown timeout key(s) read_s"),
        (BASE + "data_collection = 'maybe'\n", "'data_collection' must be"),
        (BASE + "models = []\n", "'models' must be a non-empty list"),
        (BASE + "max_queue = 0\n", "'max_queue' must be a positive integer"),
        (BASE + "options = { batch_n = true }\n", "unknown option 'batch_n'"),
        (BASE + "options = { quantization = 8 }\n", "options.quantization has the wrong type"),
        (BASE + 'api_key = "sk-live-123"\n', 'api_key = "env:NAME"'),
        (BASE + 'api_key = "env:PIXELROUTER_TEST_UNSET_VARIABLE"\n', "is not set"),
        (BASE + 'api_key = "file:/nonexistent/key"\n', "cannot read the api_key file"),
        ("[[providers]\nname=", "not valid TOML"),
        ("providers = 3\n", "array of tables"),
    ],
)
def test_configuration_errors_say_what_to_fix(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_providers(text)
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_literal_key_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_providers(BASE + f'api_key = "{SECRET}"\n')
    message = str(caught.value)
    assert SECRET not in message
    assert "env:" in message and "file:" in message


def test_a_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_providers(Path("/nonexistent/pixelrouter.toml"))


async def test_build_provider_dispatches_on_type() -> None:
    text = "".join(
        f'[[providers]]\nname = "{kind}"\ntype = "{kind}"\nurl = "http://h:1/v1"\n'
        'price = { first_mp = 0.02, extra_mp = 0.002 }\ndata_collection = "allow"\n'
        for kind in ("pixelrouter", "openrouter", "openai-images", "bfl")
    )
    providers = build_providers(load_providers(text), Settings())
    try:
        kinds = [type(p) for p in providers]
        assert kinds == [PixelrouterProvider, OpenRouterProvider, OpenAIImagesProvider, BFLProvider]
        for provider in providers:
            assert isinstance(provider, Provider)
            assert hash(provider.config)  # type: ignore[attr-defined]
            info = provider.info
            assert info.slug == info.display_name == info.kind
            assert info.price == Price(first_mp=20_000, extra_mp=2_000)
            assert info.data_collection == "allow" and info.models == (KLEIN_4B.id,)
            assert info.supported_parameters
    finally:
        for provider in providers:
            await provider.aclose()


def test_build_a_local_provider_with_its_own_slug_and_price() -> None:
    pytest.importorskip("torch")
    config = ProviderConfig(
        name="gpu0", type="local", display_name="GPU zero", price=Price(10_000, 500)
    )
    provider = build_provider(config, Settings(demo=True), start=False)
    info = provider.info
    assert (info.slug, info.display_name, info.kind) == ("gpu0", "GPU zero", "local")
    assert info.price == Price(10_000, 500)
    unnamed = build_provider(
        ProviderConfig(name="gpu1", type="local"), Settings(demo=True), start=False
    )
    assert unnamed.info.slug == "gpu1"
    assert unnamed.info.display_name == "Local (demo weights)"  # the engine's own name


def test_credentials_in_extra_headers_are_refused() -> None:
    with pytest.raises(ConfigError, match="must not carry credentials"):
        load_providers(BASE + 'options = { headers = { Authorization = "Bearer x" } }\n')
