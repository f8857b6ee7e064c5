"""Browser fixtures: ONE real `pixelrouter serve --demo --config` gateway for the module (its
local demo engine and a remote provider that always fails), which has served two attributed
apps before any page is opened, and Debian's chromium driven by Playwright (never a browser
download: without chromium the tests skip loudly, and fail under CI=true)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from processes.servers import Launcher

from .support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FailingUpstream,
    Site,
    chromium_missing_reason,
    gateway_config,
    require_chromium,
    seed_history,
    serve_traffic,
    utc_now,
)

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
    # `serve --demo` needs the engine extra.
    collect_ignore_glob = ["test_*.py"]

_LAUNCHER: Launcher | None = None


def pytest_report_header(config: pytest.Config) -> str:
    reason = chromium_missing_reason()
    if reason is None:
        return f"browser tests: chromium {CHROMIUM}"
    return f"browser tests: NOT RUN, {reason}"


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The gateway, after its traffic: see `support.serve_traffic`."""
    global _LAUNCHER
    require_chromium()  # no point starting a server for tests that cannot run
    root = tmp_path_factory.mktemp("pixelrouter-web")
    db_url = f"sqlite:///{root / 'px.db'}"
    seed_history(db_url, utc_now())
    upstream = FailingUpstream()
    launcher = _LAUNCHER = Launcher(root)
    try:
        config = gateway_config(root / "pixelrouter.toml", upstream.url)
        server = launcher.start("web", db_url, args=("--demo", "--config", str(config)))
        key, _ = server.create_key(name="web")
        built = Site(server, key, upstream)
        serve_traffic(built)
        yield built
    finally:
        launcher.stop_all()
        upstream.close()
        _LAUNCHER = None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module. Not longer: sync Playwright keeps an event loop running on
    this thread while it is open, which the async tests of other modules cannot share."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class PageProblems:
    """What went wrong in the page: console errors, uncaught exceptions, and any request to
    a host other than the server (the pages must work with no internet and no CDN)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.errors: list[str] = []
        self.allowed: list[str] = []

    def allow(self, text: str) -> None:
        """Expect console errors containing `text` (a refused request the test makes)."""
        self.allowed.append(text)

    def attach(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error" and not any(a in message.text for a in self.allowed):
            self.errors.append(f"console: {message.text}")

    def _request(self, request: Any) -> None:
        url = request.url
        if not (url.startswith(self.origin) or url.startswith("data:")):
            self.errors.append(f"request off the server: {url}")


@pytest.fixture
def problems(site: Site) -> PageProblems:
    return PageProblems(site.url)


@pytest.fixture
def page(browser: Any, site: Site, problems: PageProblems) -> Iterator[Any]:
    """A fresh page (1200x800) on the site; fails the test on console errors, uncaught
    exceptions or requests to another host."""
    context = browser.new_context(viewport={"width": 1200, "height": 800}, base_url=site.url)
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    problems.attach(opened)
    try:
        yield opened
    finally:
        context.close()
    assert not problems.errors, problems.errors


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failing browser test's report carries the tail of the gateway's log."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _LAUNCHER is not None and _LAUNCHER.started:
        report.sections.append(("pixelrouter serve log (tail)", _LAUNCHER.log_tails()))
