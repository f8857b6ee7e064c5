"""A batch's terminal webhook (docs/batches.md, "Webhooks"): sent to a real receiver on
loopback, signed with the key's secret and verified by the `openai` SDK's own Standard Webhooks
check, tried again with backoff while the receiver fails, and never sent to private addresses
unless the server may reach them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import make_api
from helpers import chat_image_body
from pixelrouter.api.batches import webhooks

MODEL = "black-forest-labs/flux.2-klein-4b"


class Receiver:
    """An HTTP server on loopback that answers 500 to the first `failures` posts, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.posts: list[tuple[float, dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers["content-length"]))
                status = 500 if len(receiver.posts) < receiver.failures else 200
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.posts.append((time.monotonic(), headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/batch"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(failures=2) as server:
        yield server


def one_item() -> list[dict[str, Any]]:
    return [{"custom_id": "only", "body": chat_image_body("a lighthouse")}]


async def test_the_webhook_arrives_signed_and_is_retried_while_the_receiver_fails(
    tmp_path: Path, demo_provider: object, receiver: Receiver
) -> None:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [demo_provider], allow_private_image_urls=True):
        secret = (await api.get("/api/v1/key/webhook-secret")).json()["secret"]
        assert secret.startswith("whsec_")
        created = await api.post(
            "/api/v1/batches",
            json={
                "endpoint": "/v1/chat/completions",
                "model": MODEL,
                "callback_url": receiver.url,
                "requests": one_item(),
            },
        )
        assert created.status_code == 202, created.text
        batch_id = created.json()["id"]
        deadline = time.monotonic() + 60
        while not any(status == 200 for *_, status in receiver.posts):
            assert time.monotonic() < deadline, receiver.posts
            await asyncio.sleep(0.2)
        assert [status for *_, status in receiver.posts] == [500, 500, 200]
        times = [at for at, *_ in receiver.posts]
        assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 3.5  # 1 s, then 4 s
        _, headers, body, _ = receiver.posts[-1]
        # The `openai` SDK's own check of a Standard Webhooks signature passes...
        client = openai.OpenAI(api_key="unused", webhook_secret=secret)
        client.webhooks.verify_signature(body, headers)
        # ...and fails for a changed body or another key's secret.
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.verify_signature(body.replace(b"completed", b"failed"), headers)
        other = webhooks.key_secret(b"another server", "0" * 64)
        with pytest.raises(openai.InvalidWebhookSignatureError):
            client.webhooks.verify_signature(body, headers, secret=other)
        event = json.loads(body)
        assert event["type"] == "batch.completed" and event["object"] == "event"
        assert event["data"]["id"] == batch_id and event["data"]["status"] == "completed"
        assert event["data"]["request_counts"] == {"completed": 1, "failed": 0, "total": 1}
        assert int(headers["webhook-timestamp"]) <= time.time() + 1
        assert headers["webhook-id"] == f"evt_{batch_id}"
        # Delivered once: no more tries.
        await asyncio.sleep(1.5)
        assert len(receiver.posts) == 3


async def test_a_cancelled_batch_sends_batch_cancelled(
    tmp_path: Path, demo_provider: object
) -> None:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    with Receiver(failures=0) as receiver:
        async for api in make_api(
            tmp_path, db, [demo_provider], allow_private_image_urls=True, batch_concurrency=1
        ):
            items = one_item() * 1
            items += [{**one_item()[0], "custom_id": f"more-{i}"} for i in range(10)]
            created = await api.post(
                "/api/v1/batches",
                json={
                    "endpoint": "/v1/chat/completions",
                    "model": MODEL,
                    "callback_url": receiver.url,
                    "requests": items,
                },
            )
            batch_id = created.json()["id"]
            assert (await api.post(f"/api/v1/batches/{batch_id}/cancel")).status_code == 200
            deadline = time.monotonic() + 60
            while not receiver.posts:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            event = json.loads(receiver.posts[0][2])
            assert event["type"] == "batch.cancelled"
            assert event["data"]["status"] == "cancelled"


async def test_private_callback_urls_are_refused(sqlite_api: Any) -> None:
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:192.168.0.1]/hook",
        "http://localhost/hook",
        "ftp://example.com/hook",
    ):
        response = await sqlite_api.post(
            "/api/v1/batches",
            json={
                "endpoint": "/v1/chat/completions",
                "model": MODEL,
                "callback_url": url,
                "requests": one_item(),
            },
        )
        assert response.status_code == 400, url
        assert "callback_url" in response.json()["error"]["message"]


async def test_delivery_checks_the_address_again() -> None:
    """A name that resolved to a public address at submission may not later: delivery judges
    the host again and sends nothing to a private one."""
    delivered, why = await webhooks.deliver(
        "http://127.0.0.1:9/hook", {"id": "batch_x", "status": "completed"}, "whsec_AAAA",
        allow_private=False,
    )  # fmt: skip
    assert not delivered and "public" in why
