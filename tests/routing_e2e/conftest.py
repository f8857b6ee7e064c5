"""Routing end to end: real `pixelrouter serve` processes (a `--no-engine` gateway, `--demo`
workers) on loopback ports, and fake upstreams with scripted faults served from this process.

Servers live for one module (started once, stopped after its last test, killed if need be); a
failing test's report carries the tails of their logs.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator

import pytest

from processes.servers import Launcher

from .support import FakeHub

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
    # `serve --demo` workers need the engine extra; the fault and circuit tests do not.
    collect_ignore_glob = [
        "test_workers.py",
        "test_dns_workers.py",
        "test_lora_workers.py",
        "test_fused_worker.py",
    ]

_ACTIVE: list[Launcher] = []


@pytest.fixture(scope="module")
def launcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    """Starts `pixelrouter serve` processes for one module; all stopped when it ends."""
    launched = Launcher(tmp_path_factory.mktemp("routing-e2e"))
    _ACTIVE.append(launched)
    failed_before = request.session.testsfailed
    try:
        yield launched
    finally:
        try:
            launched.stop_all()
        finally:
            _ACTIVE.remove(launched)
        if request.session.testsfailed > failed_before and launched.started:
            sys.stderr.write(f"\n{launched.log_tails()}\n")


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    """Fake upstreams on 127.0.0.1, served by an event loop on a thread of this process."""
    fakes = FakeHub()
    try:
        yield fakes
    finally:
        fakes.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failing test's report carries the log tails of the servers of its module."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for launched in _ACTIVE:
            if launched.started:
                report.sections.append(("pixelrouter serve logs (tails)", launched.log_tails()))
