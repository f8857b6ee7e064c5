"""The catalogue and the model page in a real browser, on a demo gateway that served two
attributed apps and has a failing provider: every tab renders, and its figures are the API's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from pixelrouter.catalog import KLEIN_4B, check_size, image_price
from pixelrouter.errors import InvalidRequest

from .support import MODEL, MODEL_PAGE, TIMEOUT, Site, save_screenshot, which

pytestmark = pytest.mark.browser

TABS = ("overview", "providers", "performance", "pricing", "apps", "activity", "uptime", "api")
# The canvases each tab draws (Chart.js), by test id.
CHARTS = {
    "performance": ["chart-latency", "chart-throughput"],
    "apps": ["chart-apps"],
    "activity": ["chart-activity"],
    "uptime": ["chart-uptime"],
}
UPTIME_COLORS = {"ok": "#16a34a", "warn": "#eab308", "bad": "#dc2626", "none": "#cbd5e1"}


def open_tab(page: Any, tab: str) -> Any:
    """Click a tab; returns its panel once visible with its charts drawn."""
    page.click(f'[role="tab"][data-tab="{tab}"]')
    panel = page.locator(f'[data-panel="{tab}"]')
    panel.wait_for(state="visible")
    assert page.get_attribute(f'a[role="tab"][data-tab="{tab}"]', "aria-selected") == "true"
    for chart in CHARTS.get(tab, []):
        canvases = panel.locator(f'[data-testid="{chart}"]')
        assert canvases.count() >= 1, chart
        for i in range(canvases.count()):
            canvases.nth(i).wait_for(state="visible")
            assert canvases.nth(i).get_attribute("data-ready") == "true", (tab, chart)
    return panel


def cell(row: Any, field: str) -> tuple[Any, str]:
    """(the raw value the page embeds, the text it shows) of one table cell."""
    located = row.locator(f'[data-field="{field}"]')
    raw = located.get_attribute("data-value")
    return (json.loads(raw) if raw is not None else None), located.inner_text().strip()


def percent_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def usd_text(micro: int) -> str:
    whole, fraction = divmod(micro, 1_000_000)
    return f"${whole}." + f"{fraction:06d}".rstrip("0").ljust(2, "0")


# ------------------------------------------------------------------------------ pages


def test_catalogue_lists_the_model_and_every_page_shows_the_demo_banner(
    page: Any, site: Site, problems: Any
) -> None:
    problems.allow("status of 404")  # the unknown model's page, on purpose
    page.goto("/")
    assert page.get_by_test_id("demo-banner").is_visible()
    assert "random weights" in page.get_by_test_id("demo-banner").inner_text()
    card = page.locator(f'[data-testid="model-card"][data-model-id="{MODEL}"]')
    assert card.is_visible()
    assert KLEIN_4B.name in card.inner_text() and "$0.014" in card.inner_text()
    save_screenshot(page, "catalogue")
    card.click()
    page.wait_for_url(f"**{MODEL_PAGE}")
    assert page.get_by_test_id("demo-banner").is_visible()
    assert page.get_by_test_id("model-name").inner_text() == KLEIN_4B.name

    for path in ("/playground", "/models/nobody/nothing"):
        response = page.goto(path)
        assert response is not None
        assert response.status == (404 if "nobody" in path else 200)
        assert page.get_by_test_id("demo-banner").is_visible(), path


def test_every_tab_renders(page: Any, site: Site) -> None:
    page.goto(MODEL_PAGE)
    overview = page.locator('[data-panel="overview"]')
    assert overview.is_visible()
    assert page.get_by_test_id("description").inner_text() == KLEIN_4B.description
    assert page.get_by_test_id("context-length").inner_text() == "67,344"
    assert page.get_by_test_id("created").inner_text() == "January 14, 2026"
    assert page.get_by_test_id("price-rule").inner_text() == "$0.014 + $0.001 × (MP − 1)"
    assert page.get_by_test_id("loras").count() == 0  # this server registers no adapter
    for tab in TABS:
        panel = open_tab(page, tab)
        for other in TABS:
            if other != tab:
                assert page.locator(f'[data-panel="{other}"]').is_hidden(), (tab, other)
        assert panel.inner_text().strip(), tab
        save_screenshot(page, f"model-{tab}")
    # A tab is addressable: the URL's fragment opens it.
    page.goto(f"{MODEL_PAGE}#uptime")
    assert page.locator('[data-panel="uptime"]').is_visible()


def test_providers_tab_shows_the_endpoints_api_figures(page: Any, site: Site) -> None:
    page.goto(f"{MODEL_PAGE}#providers")
    table = page.get_by_test_id("providers-table")
    table.wait_for(state="visible")
    endpoints = site.get(f"/models/{MODEL}/endpoints")["data"]["endpoints"]
    assert {e["tag"] for e in endpoints} == {"local", "flaky"}
    flaky = next(e for e in endpoints if e["tag"] == "flaky")
    assert flaky["uptime_last_1d"] is not None and flaky["uptime_last_1d"] < 95
    for endpoint in endpoints:
        row = table.locator(f'tr[data-provider="{endpoint["tag"]}"]')
        assert endpoint["provider_name"] in cell(row, "provider_name")[1]
        status, status_text = cell(row, "status")
        assert status == endpoint["status"]
        assert status_text == {0: "Up", -1: "Degraded", -2: "Down"}[endpoint["status"]]
        for field in ("uptime_last_30m", "uptime_last_1d"):
            value, text = cell(row, field)
            assert value == endpoint[field], field
            assert text == percent_text(endpoint[field]), field
        latency = (endpoint["latency_last_30m"] or {}).get("p50")
        value, text = cell(row, "latency_p50")
        assert value == latency
        # The API gives milliseconds; people are shown seconds.
        assert text == ("—" if latency is None else f"{latency / 1000:.2f} s")
        throughput = (endpoint["throughput_last_30m"] or {}).get("p50")
        value, text = cell(row, "throughput_p50")
        assert value == throughput
        assert text == ("—" if throughput is None else f"{throughput:,.0f} tok/s")
        # 4096 image tokens per megapixel at the endpoint's per-token image price
        per_image = float(endpoint["pricing"]["image_output"]) * 4096
        value, text = cell(row, "price_1mp")
        assert value == pytest.approx(per_image, abs=1e-9)
        assert text == usd_text(round(per_image * 1_000_000))
    local_row = table.locator('tr[data-provider="local"]')
    assert cell(local_row, "latency_p50")[0] is not None  # it served the traffic


def test_apps_tab_ranks_the_apps_as_the_api_does(page: Any, site: Site) -> None:
    page.goto(f"{MODEL_PAGE}#apps")
    table = page.get_by_test_id("apps-table")
    table.wait_for(state="visible")
    ranking = site.get("/apps", model=MODEL)["data"]
    shown = []
    for i in range(table.locator("tbody tr").count()):
        row = table.locator("tbody tr").nth(i)
        shown.append(
            {
                "rank": int(cell(row, "rank")[1]),
                "app": cell(row, "app")[1],
                "requests": cell(row, "requests")[0],
                "image_tokens": cell(row, "image_tokens")[0],
            }
        )
    assert shown == [
        {k: app[k] for k in ("rank", "app", "requests", "image_tokens")} for app in ranking
    ]
    names = [app["app"] for app in ranking]
    assert {"Lighthouse Studio", "Poster Bot", "Unattributed"} <= set(names)
    assert names.index("Lighthouse Studio") < names.index("Poster Bot")
    chart = page.evaluate(
        "() => Chart.getChart(document.getElementById('chart-apps')).data.datasets[0].data"
    )
    assert chart == [app["requests"] for app in ranking]


def test_activity_tab_shows_the_activity_api_figures(page: Any, site: Site) -> None:
    page.goto(f"{MODEL_PAGE}#activity")
    table = page.get_by_test_id("activity-table")
    table.wait_for(state="visible")
    # The page shows 30 days through today; GET /activity the 30 completed days, and today
    # on its own.
    today = datetime.now(UTC).date().isoformat()
    completed = site.get("/activity", admin=True)["data"]
    running = site.get("/activity", admin=True, date=today)["data"]
    shown_since = (datetime.now(UTC).date() - timedelta(days=29)).isoformat()
    rows = [r for r in completed + running if r["model"] == MODEL and r["date"] >= shown_since]
    assert rows
    days: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        for field in ("requests", "images", "megapixels", "completion_tokens", "usage"):
            days[row["date"]][field] += row[field]
    assert table.locator("tbody tr").count() == len(days)
    for day, totals in days.items():
        row = table.locator(f'tr[data-date="{day}"]')
        for field in ("requests", "images", "megapixels", "completion_tokens"):
            assert cell(row, field)[0] == totals[field], (day, field)
    # Dollars are not public unless the operator says so (PIXELROUTER_PUBLIC_USAGE_DOLLARS).
    assert table.locator('[data-field="usage"]').count() == 0
    charted = page.evaluate(
        """() => {
          const chart = Chart.getChart(document.getElementById('chart-activity'));
          return chart.data.datasets.map((d) => d.data.reduce((a, b) => a + b, 0));
        }"""
    )
    assert sum(charted) == sum(t["images"] for t in days.values())


def test_uptime_bars_are_coloured_by_the_hourly_uptime(page: Any, site: Site) -> None:
    page.goto(f"{MODEL_PAGE}#uptime")
    open_tab(page, "uptime")
    providers = site.get(f"/models/{MODEL}/stats")["data"]["providers"]
    seen_levels: set[str] = set()
    for provider in providers:
        canvas_id = page.get_attribute(
            f'canvas[data-testid="chart-uptime"][data-provider="{provider["tag"]}"]', "id"
        )
        drawn = page.evaluate(
            """(id) => {
              const chart = Chart.getChart(document.getElementById(id));
              const row = JSON.parse(document.getElementById('page-data').textContent)
                .uptime.find((r) => r.tag === chart.canvas.dataset.provider);
              return {hours: row.hours.map((h) => h.hour),
                      colors: chart.data.datasets[0].backgroundColor,
                      values: chart.data.datasets[0].data};
            }""",
            canvas_id,
        )
        assert len(provider["uptime_hourly"]) == len(drawn["colors"]) == 72
        drawn_bars = zip(drawn["colors"], drawn["values"], strict=True)
        bars = dict(zip(drawn["hours"], drawn_bars, strict=True))
        # Compared hour by hour: an hour may begin between the page and the API call.
        common = [h for h in provider["uptime_hourly"] if h["hour"] in bars]
        assert len(common) >= 71
        for hour in common:
            color, value = bars[hour["hour"]]
            uptime = hour["uptime"]
            level = (
                "none"
                if uptime is None
                else "ok"
                if uptime >= 95
                else "warn"
                if uptime >= 85
                else "bad"
            )
            seen_levels.add(level)
            assert color == UPTIME_COLORS[level], hour
            assert value == (100 if uptime is None else pytest.approx(uptime)), hour
    assert {"ok", "warn", "bad"} <= seen_levels  # the seeded history has all three


def test_performance_charts_plot_each_provider(page: Any, site: Site) -> None:
    page.goto(f"{MODEL_PAGE}#performance")
    open_tab(page, "performance")
    datasets = page.evaluate(
        """() => ['chart-latency', 'chart-throughput'].map((id) =>
             Chart.getChart(document.getElementById(id)).data.datasets.map(
               (d) => ({label: d.label, points: d.data.filter((v) => v !== null).length})))"""
    )
    for chart in datasets:
        assert {d["label"] for d in chart} == {"Local (demo weights)", "Flaky Cloud"}
        assert all(d["points"] >= 10 for d in chart), chart


CALCULATOR_CASES = [
    (1024, 1024, 1),
    (2048, 2048, 1),
    (1360, 768, 3),
    (1040, 1024, 2),  # just over 1 MP: 2 billable megapixels
    (4096, 1024, 4),
    (64, 64, 1),
    (1440, 1440, 4),
]
INVALID_SIZES = [(1000, 1000), (30, 30), (4096, 4096), (8192, 512), (1025, 768)]


def test_pricing_calculator_gives_spec_prices(page: Any, site: Site) -> None:
    page.goto(f"{MODEL_PAGE}#pricing")
    page.get_by_test_id("calculator").wait_for(state="visible")
    assert page.get_by_test_id("calc-total").inner_text() == "$0.014"  # 1024x1024, n=1
    for width, height, n in CALCULATOR_CASES:
        page.fill("#calc-width", str(width))
        page.fill("#calc-height", str(height))
        page.fill("#calc-n", str(n))
        expected = image_price(KLEIN_4B.price, width, height) * n
        assert page.get_by_test_id("calc-error").is_hidden()
        assert page.get_attribute("#calc-result", "data-total-micro") == str(expected)
        assert page.get_by_test_id("calc-total").inner_text() == usd_text(expected)
    assert usd_text(image_price(KLEIN_4B.price, 2048, 2048)) == "$0.017"  # SPEC §1's example

    page.fill("#calc-n", "1")
    for width, height in INVALID_SIZES:
        page.fill("#calc-width", str(width))
        page.fill("#calc-height", str(height))
        with pytest.raises(InvalidRequest) as raised:
            check_size(width, height)
        error = page.get_by_test_id("calc-error")
        assert error.is_visible()
        assert error.inner_text() == raised.value.message
        assert page.get_by_test_id("calc-result").is_hidden()
    # ... which is what the server answers for that size
    refused = httpx.post(
        f"{site.api}/images",
        json={"model": MODEL, "prompt": "x", "size": "8192x512"},
        headers=site.auth(),
        timeout=TIMEOUT,
    )
    assert refused.status_code == 400
    page.fill("#calc-width", "8192")
    page.fill("#calc-height", "512")
    assert page.get_by_test_id("calc-error").inner_text() == refused.json()["error"]["message"]
    page.fill("#calc-n", "11")
    page.fill("#calc-width", "1024")
    page.fill("#calc-height", "1024")
    assert page.get_by_test_id("calc-error").inner_text() == "n must be between 1 and 10; got 11."


def test_api_examples_run_as_shown(page: Any, site: Site, tmp_path: Path) -> None:
    page.goto(f"{MODEL_PAGE}#api")
    assert page.get_by_test_id("api-base").inner_text() == site.api
    runs = {
        "curl": (["bash", "-c"], (1024, 768)),
        "python-openai": ([sys.executable, "-c"], (1024, 1024)),
        "python-openrouter": ([sys.executable, "-c"], (1360, 768)),
    }
    env = {**os.environ, "PIXELROUTER_API_KEY": site.key}
    for slug, (command, size) in runs.items():
        code = page.get_by_test_id(f"example-{slug}").text_content()
        assert code and site.api in code, slug
        if slug == "curl" and which("curl") is None:
            continue
        workdir = tmp_path / slug
        workdir.mkdir()
        done = subprocess.run(
            [*command, code], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (slug, done.stdout, done.stderr)
        with Image.open(workdir / "lighthouse.png") as image:
            assert image.size == size, slug
    typescript = page.get_by_test_id("example-typescript").text_content()
    assert typescript and f'baseURL: "{site.api}"' in typescript
    # Run it too where a Node project with `openai` and `tsx` is at hand (no npm at test time):
    # PIXELROUTER_TEST_TS_DIR=/path/to/project (docs/web.md).
    ts_dir = os.environ.get("PIXELROUTER_TEST_TS_DIR")
    if ts_dir:
        project = Path(ts_dir)
        script = project / "pixelrouter-web-test.mts"  # beside node_modules, to import openai
        script.write_text(typescript, encoding="utf-8")
        (project / "lighthouse.png").unlink(missing_ok=True)
        try:
            done = subprocess.run(
                [str(project / "node_modules" / ".bin" / "tsx"), script.name],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            script.unlink()
        assert done.returncode == 0, (done.stdout, done.stderr)
        with Image.open(project / "lighthouse.png") as image:
            assert image.size == (1024, 1024)
