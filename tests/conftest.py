"""Shared fixtures: one demo engine per test run, and the real app in process over httpx."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# As the engine sets it (pixelrouter/engine/__init__.py), before any test module imports torch.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dbutil import BACKENDS, database_url  # noqa: E402
from pixelrouter.config import Settings  # noqa: E402
from pixelrouter.keys import generate_key  # noqa: E402

ADMIN_KEY = generate_key()

# Every log record of the whole run, at DEBUG, goes to this file; at the end of the session it
# must hold no API key (SPEC §7: never log a key).
KEY_PATTERN = re.compile(r"sk-pr-v1-[0-9a-f]{64}")
LOG_FILE = Path(os.environ.get("PIXELROUTER_TEST_LOG", "test-artifacts/test-run.log"))


def pytest_configure(config: pytest.Config) -> None:
    LOG_FILE.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(LOG_FILE, mode="w", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for noisy in ("PIL", "asyncio", "urllib3", "httpcore", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.INFO)


# Tests that start other programs: a `pixelrouter serve`, a browser, a client program or a
# benchmark script. They carry the `processes` marker; `make test-fast` leaves them out.
PROCESS_FOLDERS = {"processes", "e2e", "web", "routing_e2e"}
PROCESS_MARKERS = {"e2e", "browser"}  # tests/hardening/test_soak.py is one of these
PROCESS_TESTS = {
    "test_gateway_without_engine.py::test_serve_starts_without_the_engine_extra",
    "engine/test_speed_options.py::test_the_engine_benchmark_runs_in_its_short_mode",
}
TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.path.is_relative_to(TESTS):
            continue
        where = item.path.relative_to(TESTS)
        test = f"{where.as_posix()}::{getattr(item, 'originalname', item.name)}"
        if (
            where.parts[0] in PROCESS_FOLDERS
            or test in PROCESS_TESTS
            or any(item.get_closest_marker(marker) for marker in PROCESS_MARKERS)
        ):
            item.add_marker(pytest.mark.processes)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    logging.shutdown()
    leaked = sorted(set(KEY_PATTERN.findall(LOG_FILE.read_text(errors="replace"))))
    if leaked:
        print(f"\nFAILED: {len(leaked)} API key(s) appear in the test run's log {LOG_FILE}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@contextlib.contextmanager
def demo_engine(**config: object) -> Iterator[Any]:
    """A local provider on the demo engine (real Flux2KleinPipeline, tiny random weights) with
    `config` over `EngineConfig(demo=True, device="cpu")`, ready; shut down at the end."""
    import torch

    torch.set_num_threads(1)
    from pixelrouter.engine.pipeline import EngineConfig
    from pixelrouter.providers.local import LocalProvider

    provider = LocalProvider(config=EngineConfig(demo=True, device="cpu", **config))  # type: ignore[arg-type]
    try:
        assert provider.engine.wait_ready(180), provider.readiness()
        yield provider
    finally:
        provider.engine.shutdown()


@pytest.fixture(scope="session")
def demo_provider() -> Iterator[object]:
    """The demo engine, shared by all tests."""
    with demo_engine() as provider:
        yield provider


@dataclass
class Api:
    """An in-process client of the real app, with a management and an inference key."""

    client: httpx.AsyncClient
    app: object
    admin_key: str
    key: str
    backend: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def post(self, path: str, key: str | None = None, **kwargs: object) -> httpx.Response:
        headers = {**self.auth(key), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return await self.client.post(path, headers=headers, **kwargs)  # type: ignore[arg-type]

    async def get(self, path: str, key: str | None = None, **kwargs: object) -> httpx.Response:
        headers = {**self.auth(key), **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return await self.client.get(path, headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with database_url(request.param, tmp_path) as url:
        yield url


async def make_api(
    tmp_path: Path, db: str, providers: list[object], **overrides: object
) -> AsyncIterator[Api]:
    from pixelrouter.app import create_app

    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=db,
        admin_key=ADMIN_KEY,
        demo=True,
        keepalive_interval_s=0.2,
        **overrides,  # type: ignore[arg-type]
    )
    app = create_app(settings, providers=providers)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://pixelrouter.test", timeout=60
        ) as client:
            created = await client.post(
                "/api/v1/keys",
                json={"name": "tests"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert created.status_code == 201, created.text
            backend = "postgresql" if db.startswith("postgresql") else "sqlite"
            yield Api(client, app, ADMIN_KEY, created.json()["key"], backend)


async def api_with_its_loras(tmp_path: Path, provider: Any) -> AsyncIterator[Api]:
    """The app on SQLite over `provider` alone, with the adapters its engine registered."""
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for harness in make_api(tmp_path, db, [provider], loras=provider.engine.cfg.loras):
        yield harness


@pytest.fixture
async def api(tmp_path: Path, db_url: str, demo_provider: object) -> AsyncIterator[Api]:
    """The app on both backends (SQLite file and a fresh PostgreSQL database)."""
    async for harness in make_api(tmp_path, db_url, [demo_provider]):
        yield harness


@pytest.fixture
async def sqlite_api(tmp_path: Path, demo_provider: object) -> AsyncIterator[Api]:
    """The app on SQLite only, for tests whose subject is not storage."""
    async for harness in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [demo_provider]):
        yield harness
