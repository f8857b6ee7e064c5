"""`pixelrouter batch submit | status | download` against a real `pixelrouter serve --demo`
(started with the process tests' launcher), and the batch file's errors."""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import chat_image_body
from pixelrouter.cli import app
from processes.servers import Launcher, ServerProcess

MODEL = "black-forest-labs/flux.2-klein-4b"


def openai_line(custom_id: str, body: dict[str, object]) -> str:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """One demo gateway for the module, and an inference key of it."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("diffusers") is None:
        pytest.skip("`serve --demo` needs the engine extra")
    root = tmp_path_factory.mktemp("pixelrouter-cli-batch")
    launcher = Launcher(root)
    try:
        started = launcher.start("cli-batch", f"sqlite:///{root / 'px.db'}")
        key, _ = started.create_key(name="cli-batch")
        yield started, key
    finally:
        launcher.stop_all()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.e2e
def test_submit_follow_and_download_a_batch(
    server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    gateway, key = server
    reach = ("--server", gateway.url, "--api-key", key)
    jsonl = tmp_path / "requests.jsonl"
    lines = [
        openai_line("fox", chat_image_body("a red fox", ratio="1:1", seed=1)),
        openai_line("bird/<wide>", chat_image_body("a blue bird", ratio="3:2", seed=2)),
        json.dumps(
            chat_image_body("a green tree", ratio="1:1", seed=3)
        ),  # a bare body: custom_id line-3
        openai_line("bad", {"model": MODEL, "messages": []}),  # refused by the server
        "",
    ]
    jsonl.write_text("\n".join(lines))

    code, out, err = run("batch", "submit", str(jsonl), *reach)
    assert code == 0, err
    batch_id = out.strip().splitlines()[-1]
    assert batch_id.startswith("batch_")
    assert "submitted 4 request(s) to /v1/chat/completions" in " ".join(err.split())

    code, out, err = run("batch", "status", batch_id, "--wait", "--interval", "0.3", *reach)
    assert code == 0, out + err
    assert f"{batch_id}  completed  [{'#' * 24}] 4/4  (3 completed, 1 failed)" in out
    assert "endpoint /v1/chat/completions" in out and MODEL in out
    code, out, _ = run("batch", "status", batch_id, *reach)  # without --wait: one look
    assert code == 0 and "completed" in out and "4/4" in out

    target = tmp_path / "out"
    code, out, err = run("batch", "download", batch_id, str(target), *reach)
    assert code == 0, err
    sizes = {}
    for path in sorted(target.glob("*.png")):
        with Image.open(path) as image:
            assert image.format == "PNG"
            sizes[path.name] = image.size
    assert sizes == {
        "fox-1.png": (512, 512),
        "bird__wide_-1.png": (624, 416),
        "line-3-1.png": (512, 512),
    }
    results = [json.loads(line) for line in (target / "results.jsonl").read_text().splitlines()]
    by_id = {r["custom_id"]: r for r in results}
    assert set(by_id) == {"fox", "bird/<wide>", "line-3", "bad"}
    assert by_id["bad"]["response"] is None and "messages" in by_id["bad"]["error"]["message"]
    # results.jsonl is the API's results, signed URLs and all: each image is the file written
    image = by_id["fox"]["response"]["body"]["choices"][0]["message"]["images"][0]
    fetched = httpx.get(image["image_url"]["url"], timeout=30)
    assert fetched.content == (target / "fox-1.png").read_bytes()
    assert Image.open(io.BytesIO(fetched.content)).size == (512, 512)


def test_a_malformed_line_is_named_and_nothing_is_sent(tmp_path: Path) -> None:
    jsonl = tmp_path / "broken.jsonl"
    good = openai_line("one", chat_image_body("x", ratio="1:1", seed=1))
    jsonl.write_text(f'{good}\n{{"custom_id": "two", "body": \n')
    # Nothing listens on port 9: the file is refused before any request is made.
    reach = ("--server", "http://127.0.0.1:9", "--api-key", "sk-none")
    code, _, err = run("batch", "submit", str(jsonl), *reach)
    said = " ".join(err.split())
    assert code != 0
    assert "broken.jsonl, line 2: not JSON" in said

    jsonl.write_text(f'{good}\n{{"custom_id": "three", "body": "a cat"}}\n')
    code, _, err = run("batch", "submit", str(jsonl), *reach)
    assert code != 0 and "line 2: body must be a JSON object" in " ".join(err.split())

    jsonl.write_text(f"{good}\n{good}\n")
    code, _, err = run("batch", "submit", str(jsonl), *reach)
    assert code != 0 and "custom_id 'one' is also on line 1" in " ".join(err.split())
