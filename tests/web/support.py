"""What the browser tests share: the chromium they drive, a failing upstream provider, the
gateway configuration, the traffic the model page is opened on, and the seeded history."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.support import poll
from pixelrouter.stats.windows import hour_start
from pixelrouter.store import Store
from pixelrouter.store.stats_records import ProviderOutcome
from processes.servers import ServerProcess

MODEL = "black-forest-labs/flux.2-klein-4b"
MODEL_PAGE = f"/models/{MODEL}"
CHROMIUM = Path(os.environ.get("PIXELROUTER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
TIMEOUT = httpx.Timeout(120, connect=10)

LOCAL = "local"
FLAKY = "flaky"
# The two attributed apps, and how many requests each makes.
APPS = (
    ("https://lighthouse.example", "Lighthouse Studio", 3),
    ("https://posterbot.example", "Poster Bot", 2),
)


def chromium_missing_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"no chromium at {CHROMIUM} (install Debian's: `make browser`)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def require_chromium() -> None:
    """Skip the browser tests loudly without chromium or playwright; fail instead under CI=true.
    Never downloads a browser."""
    reason = chromium_missing_reason()
    if reason is None:
        return
    message = f"BROWSER TESTS NOT RUN: {reason}."
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} CI=true, so this is a failure.", pytrace=False)
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)
    pytest.skip(message)


# ------------------------------------------------------------------------- failing upstream


class _Failing(BaseHTTPRequestHandler):
    def _fail(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.server.calls += 1  # type: ignore[attr-defined]
        body = json.dumps({"error": {"code": 500, "message": "upstream is down"}}).encode()
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _fail

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        return


class FailingUpstream:
    """An OpenRouter-compatible upstream on loopback that answers HTTP 500 to everything."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
        self.server.calls = 0  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/api/v1"

    @property
    def calls(self) -> int:
        return int(self.server.calls)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def gateway_config(path: Path, upstream_url: str) -> Path:
    """This process's demo engine, and a dearer remote provider that always fails."""
    path.write_text(
        f"""\
[[providers]]
name = "{LOCAL}"
type = "local"
display_name = "Local (demo weights)"

[[providers]]
name = "{FLAKY}"
type = "openrouter"
display_name = "Flaky Cloud"
url = "{upstream_url}"
price = {{ first_mp = 0.016, extra_mp = 0.001 }}
timeouts = {{ connect_s = 2, first_byte_s = 10, total_s = 20 }}
""",
        encoding="utf-8",
    )
    return path


# ------------------------------------------------------------------------- history and traffic


def seed_history(db_url: str, now: datetime) -> None:
    """Provider outcomes for the 70 hours before the last two, so the hourly charts have a
    history (a fresh server has none); everything from two hours ago on is real traffic.
    Local is mostly up, with a few yellow and red hours; Flaky degrades to down."""
    rng = random.Random(7)
    store = Store(db_url)
    try:
        store.migrate()
        outcomes = []
        current = hour_start(now)
        for hours_ago in range(2, 72):
            hour = current - timedelta(hours=hours_ago)
            errors = {20: 1, 33: 3, 47: 1}.get(hours_ago, 0)  # 90 % (yellow), 70 % (red)
            for i in range(10):
                latency = int(600 + 300 * rng.random() + 8 * (72 - hours_ago))
                ok = i >= errors
                outcomes.append(_outcome(LOCAL, "Local (demo weights)", hour, i, ok, latency))
            flaky_errors = 0 if hours_ago > 30 else (1 if hours_ago > 12 else 6)
            for i in range(8):
                latency = int(1500 + 900 * rng.random())
                ok = i >= flaky_errors
                outcomes.append(_outcome(FLAKY, "Flaky Cloud", hour, i, ok, latency))
        # None within 15 minutes of the 1-day window's edge: no outcome leaves the window
        # between a page and the API call it is compared with.
        edge = now - timedelta(days=1)
        outcomes = [o for o in outcomes if abs(o.created_at - edge) > timedelta(minutes=15)]
        store.record_outcomes(outcomes)
    finally:
        store.close()


def _outcome(
    slug: str, name: str, hour: datetime, i: int, ok: bool, latency_ms: int
) -> ProviderOutcome:
    return ProviderOutcome(
        provider_slug=slug,
        provider_name=name,
        model=MODEL,
        created_at=hour + timedelta(minutes=5 * i + 1),
        status=200 if ok else 502,
        provider_caused=not ok,
        latency_ms=latency_ms,
        images=1 if ok else 0,
        image_tokens=4096 if ok else 0,
    )


@dataclass
class Site:
    """The demo gateway the pages are opened on, with an inference key (and the failing
    upstream it routes to, for the shared gateway of conftest.py)."""

    server: ServerProcess
    key: str
    upstream: FailingUpstream | None = None
    generations: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def api(self) -> str:
        return self.server.api

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, admin: bool = False, **params: Any) -> Any:
        headers = self.server.admin() if admin else self.auth()
        response = httpx.get(f"{self.api}{path}", params=params, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return response.json()

    def generate(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        payload = {"model": MODEL, "prompt": "a lighthouse", "size": "256x256", **body}
        payload = {k: v for k, v in payload.items() if v is not None}
        response = httpx.post(
            f"{self.api}/images",
            json=payload,
            headers={**self.auth(), **(headers or {})},
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        self.generations.append(response.headers["x-generation-id"])
        return response


def local_engine_ready(site: Site) -> bool:
    """`/ready` answers 200 as soon as any provider is up; the traffic needs the engine."""
    ready = httpx.get(f"{site.url}/ready", timeout=TIMEOUT).json()
    return any(p["name"] == LOCAL and p["ready"] for p in ready.get("providers", []))


def serve_traffic(site: Site) -> None:
    """Two attributed apps, one unattributed request, and requests that try the failing
    provider first (each then falls back to the local engine)."""
    poll("the local demo engine is ready", lambda: local_engine_ready(site), deadline_s=180)
    # First, while it has no recent failure to be held back for: the failing one, then local
    # (by ratio and tier: the chat API the failing one speaks cannot ask for a WxH size).
    referer, title, _ = APPS[0]
    response = site.generate(
        {"HTTP-Referer": referer, "X-Title": title},
        size=None,
        aspect_ratio="1:1",
        resolution="0.5K",
        provider={"order": [FLAKY, LOCAL]},
    )
    record = site.get("/generation", id=response.headers["x-generation-id"])["data"]
    attempts = [(a["provider_name"], a["status"]) for a in record["provider_responses"]]
    assert attempts[0][0] == "Flaky Cloud" and attempts[0][1] >= 500, attempts
    assert attempts[-1] == ("Local (demo weights)", 200), attempts
    assert site.upstream is not None and site.upstream.calls >= 1
    for referer, title, count in APPS:
        for i in range(count):
            site.generate({"HTTP-Referer": referer, "X-Title": title}, n=2 if i == 0 else 1)
    site.generate(size="512x512")  # unattributed


def save_screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def utc_now() -> datetime:
    return datetime.now(UTC)


def which(name: str) -> str | None:
    return shutil.which(name)
