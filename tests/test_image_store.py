"""The image store: images asked for as URLs are stored byte for byte and served at signed,
expiring URLs (docs/image-store.md); on a directory, on an S3 bucket (moto's server on
loopback), and through the OpenAI Images API with the real `openai` SDK."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import Api, make_api
from helpers import tiny_png
from pixelrouter.errors import ConfigError
from pixelrouter.imagestore import ImageStore, load_secret

MODEL = "black-forest-labs/flux.2-klein-4b"
SECRET = b"a test secret of enough bytes"


def local_store(tmp_path: Path, **kwargs: int) -> ImageStore:
    return ImageStore.open(
        str(tmp_path / "images"),
        SECRET,
        url_ttl_s=kwargs.get("url_ttl_s", 60),
        retention_s=kwargs.get("retention_s", 3600),
    )


async def test_stored_bytes_come_back_the_same_and_deleted_ones_do_not(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    png = tiny_png()
    stored = await store.put(png, "image/png")
    assert stored.key.endswith(".png") and stored.size == len(png)
    again = await store.put(png, "image/png")
    assert again.key != stored.key  # a new key every time
    fetched = await store.get(stored.key)
    assert fetched is not None and fetched.data == png and fetched.media_type == "image/png"
    await store.delete(stored.key)
    assert await store.get(stored.key) is None
    assert await store.get(again.key) is not None
    for bad in ("../secret.png", "a//b.png", "a/./b.png", "a\\b.png", "x.exe"):
        assert await store.get(bad) is None


def test_a_signature_covers_the_key_the_expiry_and_the_secret(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    path, expires = store.signed_path("2026/12/03/abc.png", now=1_000_000)
    assert expires == 1_000_060
    query = parse_qs(urlsplit(path).query)
    signature = query["signature"][0]
    assert store.signed("2026/12/03/abc.png", expires, signature)
    assert not store.signed("2026/12/03/abd.png", expires, signature)
    assert not store.signed("2026/12/03/abc.png", expires + 1, signature)
    other = ImageStore.open(
        str(tmp_path / "images"), b"another secret, also long", url_ttl_s=60, retention_s=60
    )
    assert not other.signed("2026/12/03/abc.png", expires, signature)


async def test_the_sweeper_deletes_only_what_is_past_its_retention(tmp_path: Path) -> None:
    store = local_store(tmp_path, retention_s=3600)
    kept = await store.put(tiny_png(), "image/png")
    assert await store.sweep() == 0
    assert await store.get(kept.key) is not None
    assert await store.sweep(datetime.now(UTC) + timedelta(hours=2)) == 1
    assert await store.get(kept.key) is None


def test_the_secret_is_generated_once_per_data_dir_unless_configured(tmp_path: Path) -> None:
    first = load_secret(None, tmp_path / "data")
    assert first == load_secret(None, tmp_path / "data")
    assert (tmp_path / "data" / "storage-secret").stat().st_mode & 0o077 == 0
    assert load_secret("configured-secret-value", tmp_path / "data") == b"configured-secret-value"
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        ImageStore.open(str(tmp_path / "x"), b"short", url_ttl_s=1, retention_s=1)


async def test_an_s3_bucket_holds_the_same(tmp_path: Path) -> None:
    """A real S3 API (moto's server on loopback) through obstore."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials
                     ).create_bucket(Bucket="images")  # fmt: skip
        store = ImageStore.open(
            "s3://images",
            SECRET,
            url_ttl_s=60,
            retention_s=3600,
            options={
                "endpoint": endpoint,
                "region": "us-east-1",
                "access_key_id": "test",
                "secret_access_key": "test",
                "client_options": {"allow_http": True},
            },
        )
        png = tiny_png()
        stored = await store.put(png, "image/png")
        fetched = await store.get(stored.key)
        assert fetched is not None and fetched.data == png
        assert await store.sweep() == 0
        assert await store.sweep(datetime.now(UTC) + timedelta(hours=2)) == 1
        assert await store.get(stored.key) is None
    finally:
        server.stop()


# ----------------------------------------------------------------- through the API


@pytest.fixture
async def url_api(tmp_path: Path, demo_provider: object) -> AsyncIterator[Api]:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for harness in make_api(tmp_path, db, [demo_provider], storage_url_ttl_s=120):
        yield harness


async def _generate_url(api: Api, **extra: object) -> tuple[httpx.Response, str]:
    body = {"model": MODEL, "prompt": "a lighthouse", "size": "64x64", "seed": 5, **extra}
    response = await api.post("/api/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    return response, response.json()["data"][0]["url"]


async def test_response_format_url_stores_the_image_and_charges_it_once(url_api: Api) -> None:
    response, url = await _generate_url(url_api, response_format="url")
    body = response.json()
    assert "b64_json" not in body["data"][0] or body["data"][0]["b64_json"] is None
    assert url.startswith("http://pixelrouter.test/api/v1/files/")
    fetched = await url_api.client.get(url)  # no API key: the signature is the credential
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == "image/png"
    assert "max-age=" in fetched.headers["cache-control"]
    # The same request as b64_json: the stored bytes are the image, byte for byte.
    b64 = (await url_api.post("/api/v1/images/generations", json={
        "model": MODEL, "prompt": "a lighthouse", "size": "64x64", "seed": 5,
    })).json()["data"][0]["b64_json"]  # fmt: skip
    assert fetched.content == base64.b64decode(b64)
    record = await url_api.get(f"/api/v1/generation?id={response.headers['x-generation-id']}")
    assert record.json()["data"]["total_cost"] == body["usage"]["cost"] == 0.014
    credits = (await url_api.get("/api/v1/key")).json()["data"]
    assert credits["usage"] == pytest.approx(0.028)


async def test_wrong_signatures_expired_and_deleted_urls_are_refused(url_api: Api) -> None:
    _, url = await _generate_url(url_api, response_format="url")
    parts = urlsplit(url)
    key = parts.path.removeprefix("/api/v1/files/")
    query = parse_qs(parts.query)
    expires, signature = int(query["expires"][0]), query["signature"][0]
    wrong = await url_api.client.get(
        f"{parts.path}?expires={expires}&signature={'0' * len(signature)}"
    )
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == 403
    longer = await url_api.client.get(
        f"{parts.path}?expires={expires + 3600}&signature={signature}"
    )
    assert longer.status_code == 403
    images = url_api.app.state.px.images  # type: ignore[attr-defined]
    past = int(time.time()) - 1
    expired = await url_api.client.get(
        f"{parts.path}?expires={past}&signature={images.signature(key, past)}"
    )
    assert expired.status_code == 404 and "expired" in expired.json()["error"]["message"]
    missing = await url_api.client.get(parts.path)
    assert missing.status_code in (400, 422)
    await images.delete(key)
    gone = await url_api.client.get(url)
    assert gone.status_code == 404 and gone.json()["error"]["metadata"]["error_type"] == "not_found"


async def test_a_stream_cannot_ask_for_urls(url_api: Api) -> None:
    response = await url_api.post("/api/v1/images/generations", json={
        "model": MODEL, "prompt": "x", "size": "64x64", "stream": True, "response_format": "url",
    })  # fmt: skip
    assert response.status_code == 400
    assert "b64_json" in response.json()["error"]["message"]


async def test_images_that_cannot_be_stored_are_a_503_and_not_charged(
    tmp_path: Path, demo_provider: object
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the store's directory would be")
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [demo_provider], storage_url=str(blocked / "images")):
        response = await api.post("/api/v1/images/generations", json={
            "model": MODEL, "prompt": "x", "size": "64x64", "response_format": "url",
        })  # fmt: skip
        assert response.status_code == 503, response.text
        assert "none is charged" in response.json()["error"]["message"]
        record = await api.get(f"/api/v1/generation?id={response.headers['x-generation-id']}")
        assert record.json()["data"]["total_cost"] == 0
        assert (await api.get("/api/v1/key")).json()["data"]["usage"] == 0


async def test_the_openai_sdk_gets_a_url_it_can_fetch(url_api: Api) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(
        api_key=url_api.key,
        base_url="http://pixelrouter.test/api/v1",
        http_client=url_api.client,
    )
    result = await client.images.generate(
        model=MODEL, prompt="a lighthouse", size="256x256", response_format="url"
    )
    assert result.data and result.data[0].url and result.data[0].b64_json is None
    fetched = await url_api.client.get(result.data[0].url)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")


def test_the_storage_table_of_the_config_file(tmp_path: Path) -> None:
    from pixelrouter.config import Settings

    config = tmp_path / "pixelrouter.toml"
    config.write_text('[storage]\nurl = "memory://"\nurl_ttl_s = 30\nretention_s = 90\n')
    settings = Settings.load(config)
    assert (settings.resolved_storage_url, settings.storage_url_ttl_s) == ("memory://", 30)
    assert settings.storage_retention_s == 90
    for table, words in (
        ('secret = "x"', "PIXELROUTER_STORAGE_SECRET only"),
        ("url_ttl_s = 0", "whole number of seconds"),
        ('options = "x"', "must be a table"),
    ):
        config.write_text(f"[storage]\n{table}\n")
        with pytest.raises(ConfigError, match=words):
            Settings.load(config)
