"""Plain HTTP against the real server: the SSE wire format, headers everywhere, and a client
that goes away mid-stream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .support import (
    MODEL,
    Server,
    b64_size,
    check_pixelrouter_headers,
    data_url_size,
    poll,
    sse_lines,
    sse_payloads,
)

pytestmark = pytest.mark.e2e

KEEPALIVE = ": PIXELROUTER PROCESSING"


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(120, connect=10)) as client:
        yield client


def chat_body(**extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a lighthouse in a storm"}],
        "modalities": ["image"],
        "image_config": {"aspect_ratio": "16:9", "image_size": "0.5K"},
        **extra,
    }


def test_chat_stream_wire_format(server: Server, http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/chat/completions", json=chat_body(stream=True), headers=server.auth()
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    check_pixelrouter_headers(response)
    lines = sse_lines(response.text)
    assert KEEPALIVE in lines  # the keep-alive comment, at least once
    assert all(line.startswith((":", "data: ")) for line in lines), lines
    assert lines[-1] == "data: [DONE]"

    chunks = sse_payloads(response.text)[:-1]
    assert {c["id"] for c in chunks} == {response.headers["x-generation-id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    with_images = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("images")]
    assert len(with_images) == 1  # each image whole, in one chunk
    images = with_images[0]["choices"][0]["delta"]["images"]
    assert [data_url_size(im["image_url"]["url"]) for im in images] == [(672, 384)]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4096
    assert chunks[-1]["usage"]["cost"] == pytest.approx(0.014)


def test_image_api_stream_wire_format(server: Server, http: httpx.Client) -> None:
    response = http.post(
        "/api/v1/images",
        json={"model": MODEL, "prompt": "a kite", "size": "256x256", "n": 2, "stream": True},
        headers=server.auth(),
    )
    assert response.status_code == 200, response.text
    check_pixelrouter_headers(response)
    lines = sse_lines(response.text)
    assert KEEPALIVE in lines and lines[-1] == "data: [DONE]"
    events = sse_payloads(response.text)[:-1]
    assert [e["type"] for e in events] == ["image_generation.completed"] * 2
    assert [b64_size(e["b64_json"]) for e in events] == [(256, 256), (256, 256)]
    assert "usage" not in events[0] and events[-1]["usage"]["cost"] == pytest.approx(0.028)


@pytest.mark.parametrize(
    ("method", "path", "auth", "status"),
    [
        ("GET", "/health", None, 200),
        ("GET", "/ready", None, 200),
        ("GET", "/api/v1/models", "key", 200),
        ("GET", "/api/v1/models", None, 401),
        ("GET", "/api/v1/key", "bad", 401),
        ("GET", "/api/v1/credits", "key", 403),
        ("POST", "/api/v1/images", "admin", 403),
        ("GET", "/api/v1/generation?id=gen-0-nothing", "key", 404),
        ("GET", "/api/v1/no-such-endpoint", "key", 404),
        ("POST", "/api/v1/images", "key", 400),
    ],
)
def test_headers_on_every_response(
    server: Server, http: httpx.Client, method: str, path: str, auth: str | None, status: int
) -> None:
    keys = {"key": server.key, "admin": server.admin_key, "bad": "sk-pr-v1-" + "f" * 64}
    headers = server.auth(keys[auth]) if auth else {}
    body = {"model": MODEL, "prompt": "x", "size": "1000x1000"} if method == "POST" else None
    response = http.request(method, path, headers=headers, json=body)
    assert response.status_code == status, response.text
    check_pixelrouter_headers(response)
    if status >= 400:
        error = response.json()["error"]
        assert error["code"] == status and error["message"]
    # A fresh id per response.
    again = http.request(method, path, headers=headers, json=body)
    assert again.headers["x-generation-id"] != response.headers["x-generation-id"]


def test_client_disconnecting_mid_stream_does_not_break_the_server(
    server: Server, http: httpx.Client
) -> None:
    # A 1K image takes a moment on the demo engine; leave once it has started denoising.
    body = chat_body(stream=True, image_config={"image_size": "1K"})
    with http.stream(
        "POST", "/api/v1/chat/completions", json=body, headers=server.auth()
    ) as response:
        assert response.status_code == 200
        generation_id = response.headers["x-generation-id"]
        seen = []
        for line in response.iter_lines():
            seen.append(line)
            if line.startswith(": PIXELROUTER PROGRESS"):
                break
        assert not any('"images"' in line for line in seen), "finished before we could leave"
    # Closing the response drops the connection mid-stream.

    def record() -> dict[str, object] | None:
        r = http.get("/api/v1/generation", params={"id": generation_id}, headers=server.auth())
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        return data if data["state"] != "pending" else None

    final = poll("the abandoned generation is closed", record)
    assert final["state"] == "cancelled" and final["cancelled"] is True
    assert final["total_cost"] == 0.0 and final["streamed"] is True

    def engine_idle() -> bool:
        r = http.get("/api/v1/engine/status", headers=server.auth())
        data = r.json()["data"]
        return data["ready"] and data["queue_depth"] == 0 and data["running_images"] == 0

    poll("the engine is idle again", engine_idle)

    # The server still serves, streaming and not.
    streamed = http.post(
        "/api/v1/chat/completions", json=chat_body(stream=True), headers=server.auth()
    )
    assert streamed.status_code == 200 and sse_lines(streamed.text)[-1] == "data: [DONE]"
    plain = http.post("/api/v1/chat/completions", json=chat_body(), headers=server.auth())
    assert plain.status_code == 200, plain.text
    images = plain.json()["choices"][0]["message"]["images"]
    assert [data_url_size(im["image_url"]["url"]) for im in images] == [(672, 384)]
    assert http.get("/health").status_code == 200
