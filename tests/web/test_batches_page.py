"""The batches page in a real browser: a key's batch submitted over HTTP reaches `completed`
with a full progress bar, and its results show the images from their signed URLs and the
errors, with every custom_id as text."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from helpers import chat_image_body

from .support import MODEL, TIMEOUT, Site, save_screenshot

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.__pwned = 1">'


def submit(site: Site) -> str:
    requests = [
        {"custom_id": HOSTILE, "body": chat_image_body("a red fox", seed=1)},
        {"custom_id": "bird", "body": chat_image_body("a blue bird", seed=2)},
        {"custom_id": "bad", "body": {"model": MODEL, "messages": []}},
    ]
    created = httpx.post(
        f"{site.api}/batches",
        json={"endpoint": "/v1/chat/completions", "model": MODEL, "requests": requests},
        headers=site.auth(),
        timeout=TIMEOUT,
    )
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def test_a_batch_runs_to_completed_and_shows_its_images_and_errors(page: Any, site: Site) -> None:
    page.goto("/batches")
    assert "Enter your API key" in page.get_by_test_id("bt-status").inner_text()
    batch_id = submit(site)
    page.fill("#bt-key", site.key)
    page.click("#bt-show")

    row = page.locator(f'[data-testid="bt-row"][data-batch-id="{batch_id}"]')
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[:2] == [batch_id, "/v1/chat/completions"]
    # the page refreshes itself until the batch has ended
    page.wait_for_selector(
        f'[data-testid="bt-row"][data-batch-id="{batch_id}"][data-status="completed"]',
        timeout=120_000,
    )
    progress = row.get_by_test_id("bt-progress")
    assert progress.get_attribute("data-done") == progress.get_attribute("data-total") == "3"
    assert progress.evaluate("bar => bar.value === bar.max")
    assert row.locator("td").nth(5).inner_text() == "2 completed · 1 failed · 3 total"

    page.reload()  # the key stays in the tab (the playground's entry)
    assert page.input_value("#bt-key") == site.key
    row.click()
    page.wait_for_selector('[data-testid="bt-detail"][data-status="completed"]')
    results = page.get_by_test_id("bt-result")
    assert results.count() == 3
    assert page.get_by_test_id("bt-custom-id").all_inner_texts() == [HOSTILE, "bird", "bad"]
    assert "messages" in page.get_by_test_id("bt-result-error").inner_text()
    thumbs = page.get_by_test_id("bt-thumb")
    assert thumbs.count() == 2
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('[data-testid="bt-thumb"]'))
                 .every((img) => img.complete && img.naturalWidth > 0)""",
        timeout=30_000,
    )
    assert thumbs.first.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [512, 512]
    # the hostile custom_id is text: no element was made of it, no handler ran
    assert page.locator('img[src="x"]').count() == 0
    assert page.evaluate("() => window.__pwned") is None
    save_screenshot(page, "batches")
