"""`discovery = "dns"`: the configuration it takes and the resolution it does, against a real
DNS server on loopback. The workers themselves are tested end to end in
`tests/routing_e2e/test_dns_workers.py`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pixelrouter.errors import ConfigError, NameNotResolved
from pixelrouter.providers import build_provider
from pixelrouter.providers.config import Discovery, load_providers
from pixelrouter.providers.discovery import DiscoveredWorkers, resolve
from routing_e2e.dns import DNS

WORKERS = """
[[providers]]
name = "workers"
type = "pixelrouter"
url = "http://workers.pixelrouter.test:8000/api/v1"
"""


@pytest.fixture
def dns() -> Iterator[DNS]:
    server = DNS()
    try:
        yield server
    finally:
        server.stop()


def test_discovery_as_a_word_or_a_table() -> None:
    (plain,) = load_providers(WORKERS + 'discovery = "dns"\n')
    assert plain.discovery == Discovery()
    (table,) = load_providers(
        WORKERS + 'discovery = { type = "dns", interval_s = 2, nameserver = "10.0.0.10:53" }\n'
    )
    assert table.discovery == Discovery(interval_s=2.0, nameserver=("10.0.0.10", 53))
    (static,) = load_providers(WORKERS)
    assert static.discovery is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"consul"', "must be"),
        ('{ type = "dns", interval_s = 0 }', "interval_s"),
        ('{ type = "dns", nameserver = "10.0.0.10" }', "address:port"),
        ('{ type = "dns", every = 5 }', "unknown discovery key"),
    ],
)
def test_a_wrong_discovery_says_what_is_wrong(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_providers(WORKERS + f"discovery = {value}\n")


def test_discovery_is_for_workers_only() -> None:
    with pytest.raises(ConfigError, match="pixelrouter"):
        load_providers(
            '[[providers]]\nname = "up"\ntype = "openrouter"\nurl = "https://openrouter.ai/api/v1"'
            '\napi_key = "env:HOME"\ndiscovery = "dns"\n'
        )


async def test_a_name_resolves_to_every_address_it_has(dns: DNS) -> None:
    dns.zone.set("workers.pixelrouter.test", ["127.0.0.3", "127.0.0.2"])
    server = ("127.0.0.1", dns.port)
    assert await resolve("workers.pixelrouter.test", 8000, server) == ["127.0.0.2", "127.0.0.3"]
    dns.zone.drop("workers.pixelrouter.test")
    with pytest.raises(NameNotResolved, match="workers.pixelrouter.test"):
        await resolve("workers.pixelrouter.test", 8000, server)
    assert await resolve("127.0.0.9", 8000, server) == ["127.0.0.9"]  # an address names itself


async def test_the_pool_follows_the_name_and_keeps_the_last_good_set(dns: DNS) -> None:
    (config,) = load_providers(
        WORKERS + f'discovery = {{ type = "dns", nameserver = "{dns.nameserver}" }}\n'
    )
    pool = build_provider(config, settings=None)  # type: ignore[arg-type]
    assert isinstance(pool, DiscoveredWorkers)
    try:
        assert pool.readiness() == (
            False,
            "no worker found: workers.pixelrouter.test has not been resolved yet",
        )
        dns.zone.set("workers.pixelrouter.test", ["127.0.0.2", "127.0.0.3"])
        await pool.discover()
        assert sorted(pool.instances) == ["127.0.0.2", "127.0.0.3"]
        assert pool.instances["127.0.0.2"].url == "http://127.0.0.2:8000/api/v1"
        dns.zone.set("workers.pixelrouter.test", ["127.0.0.3", "127.0.0.4"])
        await pool.discover()
        assert sorted(pool.instances) == ["127.0.0.3", "127.0.0.4"]
        dns.zone.drop("workers.pixelrouter.test")
        await pool.discover()
        assert sorted(pool.instances) == ["127.0.0.3", "127.0.0.4"]  # the last good set
        assert pool.dns_error is not None and pool.status().error == pool.dns_error
        assert set(pool.status().instances) == {"127.0.0.3", "127.0.0.4"}
    finally:
        await pool.aclose()
