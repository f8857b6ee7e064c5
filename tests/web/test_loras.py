"""LoRA adapters in the pages, on a demo gateway of this module's own that registers two real
adapters (PEFT files made for the demo transformer) and a corrupt one: the model page's
Overview lists the accepted ones with the operator's text escaped, and the playground picks
one, sends it as `loras`, and shows the server's refusal of a bad scale."""

from __future__ import annotations

import ast
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from e2e.support import poll
from engine.loras_helpers import make_adapter
from processes.servers import Launcher

from .support import (
    MODEL,
    MODEL_PAGE,
    Site,
    local_engine_ready,
    require_chromium,
    save_screenshot,
    which,
)

pytestmark = pytest.mark.browser

# Operators write descriptions (uploads will soon): markup in one must be shown as text.
INK_DESCRIPTION = 'Ink & wash <script>document.title = "injected"</script><b>bold</b>'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """This module's gateway, in place of conftest's shared one (which has no adapters), so
    the `page` fixture opens this one: its demo engine with 'ink-wash' (priced, described),
    'plain' (neither) and 'broken' (not a safetensors file: refused, so never listed)."""
    require_chromium()
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pixelrouter-web-loras")
    ink = make_adapter(root / "ink-wash", seed=1, rank=4)
    plain = make_adapter(root / "plain", seed=2, rank=8)
    broken = root / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    config = root / "pixelrouter.toml"
    config.write_text(
        f"""\
[[providers]]
name = "local"
type = "local"
display_name = "Local (demo weights)"

[[loras]]
name = "ink-wash"
path = "{ink}"
default_scale = 0.8
price = {{ first_mp = 0.02, extra_mp = 0.002 }}
description = '''{INK_DESCRIPTION}'''

[[loras]]
name = "plain"
path = "{plain}"

[[loras]]
name = "broken"
path = "{broken}"
""",
        encoding="utf-8",
    )
    launcher = Launcher(root)
    try:
        server = launcher.start(
            "web-loras", f"sqlite:///{root / 'px.db'}", args=("--demo", "--config", str(config))
        )
        key, _ = server.create_key(name="web-loras")
        built = Site(server, key)
        poll("the demo engine checked its adapters", lambda: local_engine_ready(built), 180)
        yield built
    finally:
        launcher.stop_all()


def test_the_overview_lists_the_accepted_adapters_escaped(
    page: Any, site: Site, tmp_path: Path
) -> None:
    page.goto(MODEL_PAGE)
    section = page.get_by_test_id("loras")
    assert section.is_visible()
    rows = section.locator("tbody tr")
    assert [rows.nth(i).get_attribute("data-lora") for i in range(rows.count())] == [
        "ink-wash",
        "plain",
    ]
    # The same adapters as the variants /models lists (the refused one in neither).
    listed = [m["id"] for m in site.get("/models")["data"]]
    assert [i for i in listed if ":" in i] == [f"{MODEL}:ink-wash", f"{MODEL}:plain"]

    def cell(name: str, field: str) -> str:
        return str(section.locator(f'tr[data-lora="{name}"] [data-field="{field}"]').inner_text())

    # The operator's markup is text: shown as written, no element made of it, nothing run.
    assert cell("ink-wash", "description") == INK_DESCRIPTION
    assert section.locator("tbody script, tbody b").count() == 0
    assert page.title() != "injected"
    assert cell("ink-wash", "default_scale") == "0.8"
    assert cell("ink-wash", "price") == "$0.02 + $0.002 × (MP − 1)"
    assert cell("ink-wash", "rank") == "4"
    assert cell("ink-wash", "variant") == f"{MODEL}:ink-wash"
    assert cell("plain", "description") == ""
    assert cell("plain", "default_scale") == "1"
    assert cell("plain", "price") == "model price"
    assert cell("plain", "rank") == "8"

    # The example request names the first adapter at its default scale, and runs as shown:
    # the image it writes was charged the adapter's price ($0.02 for 1 MP), not the model's.
    example = page.get_by_test_id("example-lora").text_content()
    assert example and f"{site.api}/images" in example
    assert '"loras": [{"name": "ink-wash", "scale": 0.8}]' in example
    if which("curl") is not None:
        done = subprocess.run(
            ["bash", "-c", example],
            cwd=tmp_path,
            env={**os.environ, "PIXELROUTER_API_KEY": site.key},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert ast.literal_eval(done.stdout.strip())["cost"] == pytest.approx(0.02)
        with Image.open(tmp_path / "lighthouse.png") as image:
            assert image.size == (1024, 768)
    save_screenshot(page, "model-loras")


def test_the_playground_sends_the_chosen_adapter(page: Any, site: Site, problems: Any) -> None:
    problems.allow("status of 400")  # the refused scale below
    page.goto("/playground")
    picker = page.get_by_test_id("pg-loras")
    assert picker.is_visible()
    adapters = picker.locator("[data-lora]")
    assert [adapters.nth(i).get_attribute("data-lora") for i in range(adapters.count())] == [
        "ink-wash",
        "plain",
    ]
    ink = picker.locator('[data-lora="ink-wash"]')
    assert ink.get_by_label("Scale of ink-wash").input_value() == "0.8"  # its default
    assert INK_DESCRIPTION in ink.inner_text()
    assert picker.locator("script, b").count() == 0

    page.fill("#pg-key", site.key)
    page.select_option("#pg-size-mode", "size")
    page.fill("#pg-width", "128")
    page.fill("#pg-height", "128")
    page.fill("#pg-seed", "3")
    ink.locator('input[type="checkbox"]').check()
    # A scale out of range is the server's 400, shown like any refusal.
    ink.get_by_label("Scale of ink-wash").fill("5")
    page.click("#pg-submit")
    error = page.get_by_test_id("pg-error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith("400: ")
    assert "scale must be between -4 and 4; got 5" in error.inner_text()

    ink.get_by_label("Scale of ink-wash").fill("0.5")
    page.click("#pg-submit")
    page.wait_for_selector('#pg-progress[data-done="true"]', timeout=60_000)
    page.wait_for_function(
        "() => document.getElementById('pg-provider').textContent !== ''", timeout=30_000
    )
    assert error.is_hidden()
    record = site.get("/generation", id=page.get_by_test_id("pg-generation").inner_text())["data"]
    assert record["loras"] == [{"name": "ink-wash", "scale": 0.5}]
    # The adapter's price, not the model's ($0.014), for one image of one megapixel.
    assert record["total_cost"] == pytest.approx(0.02)
    assert page.get_by_test_id("pg-cost").inner_text() == "$0.02"
    assert page.locator('[data-testid="pg-images"] img').count() == 1
    save_screenshot(page, "playground-loras")
