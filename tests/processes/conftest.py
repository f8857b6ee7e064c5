"""Process-level fixtures: `launcher` starts real `pixelrouter serve` processes for one test and
stops them after it; a failing test's report carries their log tails."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbutil import bounced_postgres_url, fresh_postgres_url

from .servers import Launcher

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
    # `serve --demo` needs the engine extra.
    collect_ignore_glob = ["test_*.py"]


_LAUNCHER = pytest.StashKey[Launcher]()


@pytest.fixture
def launcher(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Launcher]:
    launched = Launcher(tmp_path)
    request.node.stash[_LAUNCHER] = launched
    try:
        yield launched
    finally:
        launched.stop_all()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (skipped loudly without a server; fails under CI)."""
    with fresh_postgres_url() as url:
        yield url


@pytest.fixture(params=["direct", "pgbouncer"])
def shared_postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database, reached directly or through PgBouncer in transaction
    pooling mode (as a fleet of gateways reaches it)."""
    if request.param == "direct":
        with fresh_postgres_url() as url:
            yield url
    else:
        with bounced_postgres_url() as url:
            yield url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failing test's report carries the log tails of the servers it started."""
    outcome = yield
    report = outcome.get_result()
    launched = item.stash.get(_LAUNCHER, None)
    if report.failed and launched is not None and launched.started:
        report.sections.append(("pixelrouter serve logs (tails)", launched.log_tails()))
