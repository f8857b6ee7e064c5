"""The playground in a real browser: it streams a generation from the demo gateway, shows the
denoising progress, the images, their cost and the provider that made them."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixelrouter.catalog import KLEIN_4B, image_price

from .support import Site, save_screenshot

pytestmark = pytest.mark.browser


def reference_png(path: Path) -> Path:
    Image.linear_gradient("L").resize((192, 128)).convert("RGB").save(path, format="PNG")
    return path


def test_playground_generates_with_progress_and_shows_the_cost(
    page: Any, site: Site, tmp_path: Path
) -> None:
    page.goto("/playground")
    assert page.get_by_test_id("demo-banner").is_visible()
    page.fill("#pg-key", site.key)
    page.fill("#pg-prompt", "a lighthouse at dusk")
    page.select_option("#pg-size-mode", "size")
    page.fill("#pg-width", "192")
    page.fill("#pg-height", "128")
    page.fill("#pg-seed", "7")
    page.fill("#pg-n", "2")
    page.set_input_files("#pg-refs", str(reference_png(tmp_path / "ref.png")))
    page.click("#pg-submit")

    page.wait_for_selector('#pg-progress[data-done="true"]', timeout=60_000)
    page.wait_for_function(
        "() => document.getElementById('pg-provider').textContent !== ''", timeout=30_000
    )
    assert page.get_by_test_id("pg-error").is_hidden()
    progress = page.get_by_test_id("pg-progress")
    steps = int(progress.get_attribute("max") or 0)
    assert steps == KLEIN_4B.default_steps
    assert int(progress.get_attribute("data-events") or 0) >= steps  # every step was reported

    images = page.locator('[data-testid="pg-images"] img')
    assert images.count() == 2
    for i in range(2):
        src = images.nth(i).get_attribute("src") or ""
        assert src.startswith("data:image/png;base64,")
        decoded = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert decoded.size == (192, 128)

    expected = 2 * image_price(KLEIN_4B.price, 192, 128)
    assert page.get_by_test_id("pg-cost").inner_text() == "$0.028" and expected == 28_000
    generation_id = page.get_by_test_id("pg-generation").inner_text()
    record = site.get("/generation", id=generation_id)["data"]
    assert record["total_cost"] == pytest.approx(0.028)
    assert page.get_by_test_id("pg-provider").inner_text() == record["provider_name"]
    assert record["streamed"] is True
    assert record["app_title"] == "pixelrouter playground"
    assert page.get_by_test_id("pg-tokens").inner_text() == str(2 * 4096)
    save_screenshot(page, "playground")


def test_playground_shows_the_servers_error(page: Any, site: Site, problems: Any) -> None:
    problems.allow("status of 400")  # the browser logs the refused request
    page.goto("/playground")
    assert page.get_by_test_id("pg-loras").is_hidden()  # a model without adapters: no picker
    page.fill("#pg-key", site.key)
    page.select_option("#pg-size-mode", "size")
    page.fill("#pg-width", "100")
    page.fill("#pg-height", "100")
    page.click("#pg-submit")
    error = page.get_by_test_id("pg-error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith("400: Size 100x100 is not supported")
    assert page.locator('[data-testid="pg-images"] img').count() == 0
