"""The stream's own comments are defined once (`pixelrouter.sse`): the server writes them, the
CLI reads them with the same definition, and the playground reads the prefix the page gives it."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import make_api
from pixelrouter import sse
from pixelrouter.api.streaming import Tick
from pixelrouter.types import ProgressEvent

PLAYGROUND_JS = Path(sse.__file__).parent / "web" / "static" / "playground.js"


def test_progress_comments_read_back_as_written() -> None:
    line = sse.progress_comment(3, 4).decode().splitlines()[0]
    assert line == ": PIXELROUTER PROGRESS 3/4"
    assert sse.read_progress(line) == (3, 4)
    assert sse.read_progress(f": {sse.KEEPALIVE}") is None
    assert sse.read_progress('data: {"type": "image_generation.completed"}') is None


def test_a_tick_is_a_keepalive_or_its_progress() -> None:
    assert Tick().comment() == b": PIXELROUTER PROCESSING\n\n"
    progress = Tick(ProgressEvent("gen-1", step=2, total_steps=4)).comment()
    assert sse.read_progress(progress.decode().splitlines()[0]) == (2, 4)


def test_the_playground_script_has_no_copy_of_the_progress_format() -> None:
    script = PLAYGROUND_JS.read_text()
    assert sse.PROGRESS not in script
    assert "dataset.progressPrefix" in script


async def test_the_playground_page_carries_the_progress_prefix(tmp_path, demo_provider) -> None:
    async for api in make_api(tmp_path, f"sqlite:///{tmp_path / 'px.db'}", [demo_provider]):
        page = await api.client.get("/playground")
        assert page.status_code == 200
        prefix = re.search(r'data-progress-prefix="([^"]*)"', page.text)
        assert prefix is not None and prefix[1] == sse.PROGRESS
