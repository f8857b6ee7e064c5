"""LoRA adapters uploaded and removed at run time: `POST /api/v1/loras` checks the file (its
safetensors header, then the engine loads it against this transformer) and registers it,
`DELETE /api/v1/loras/{name}` removes it; every refusal a clear error in the SPEC envelope with
nothing stored or registered; uploads kept across a restart."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Api, api_with_its_loras, demo_engine, make_api
from engine.loras_helpers import make_adapter
from pixelrouter.loras import LoraRegistry, LoraSpec

MODEL = "black-forest-labs/flux.2-klein-4b"
WEIGHTS = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Three real adapters of the demo transformer (diffusers format), as uploaded bytes, and
    broken ones made from them."""
    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("upload-adapters")
    files = {
        name: (make_adapter(root / name, seed) / WEIGHTS).read_bytes()
        for seed, name in enumerate(("ink", "glass", "configured"), start=1)
    }
    weights = load_file(str(root / "ink" / WEIGHTS))
    # Trained for a wider model: every lora_A takes 8 more inputs than this transformer's layers.
    wider = {
        key: torch.zeros(t.shape[0], t.shape[1] + 8) if ".lora_A." in key else t
        for key, t in weights.items()
    }
    save_file(wider, str(root / "wider.safetensors"))
    files["wider"] = (root / "wider.safetensors").read_bytes()
    # Layers this transformer does not have.
    deeper = {
        key.replace("transformer_blocks.0.", "transformer_blocks.97."): t
        for key, t in weights.items()
    }
    save_file(deeper, str(root / "deeper.safetensors"))
    files["deeper"] = (root / "deeper.safetensors").read_bytes()
    # A valid safetensors file that holds no LoRA factors.
    save_file({"transformer.proj_out.weight": torch.ones(4, 4)}, str(root / "full.safetensors"))
    files["full"] = (root / "full.safetensors").read_bytes()
    files["truncated"] = files["ink"][: len(files["ink"]) // 2]
    files["random"] = os.urandom(4096)
    return files


@pytest.fixture(scope="module")
def upload_provider(
    tmp_path_factory: pytest.TempPathFactory, adapter_files: dict[str, bytes]
) -> Iterator[Any]:
    """A demo engine with one adapter from the config file, 'configured'."""
    path = tmp_path_factory.mktemp("configured") / "configured.safetensors"
    path.write_bytes(adapter_files["configured"])
    with demo_engine(loras=LoraRegistry([LoraSpec("configured", str(path))])) as provider:
        yield provider


@pytest.fixture
async def uapi(tmp_path: Path, upload_provider: Any) -> AsyncIterator[Api]:
    async for harness in api_with_its_loras(tmp_path, upload_provider):
        yield harness


async def upload(
    api: Api, name: str | None, content: bytes, key: str | None = None, **fields: Any
) -> Any:
    data = {k: v for k, v in {"name": name, **fields}.items() if v is not None}
    return await api.post(
        "/api/v1/loras",
        key=key or api.admin_key,
        files={"file": ("adapter.safetensors", content, "application/octet-stream")},
        data=data,
    )


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "a lantern", "size": "128x128", "seed": 5, **fields}


def _image(response: Any) -> bytes:
    assert response.status_code == 200, response.text
    return base64.b64decode(response.json()["data"][0]["b64_json"])


def _stored(tmp_path: Path) -> list[str]:
    directory = tmp_path / "data" / "loras"
    return sorted(p.name for p in directory.glob("*.safetensors")) if directory.exists() else []


async def _listed(api: Api) -> dict[str, Any]:
    response = await api.get("/api/v1/loras")
    assert response.status_code == 200, response.text
    return {row["name"]: row for row in response.json()["data"]}


async def test_an_upload_is_checked_registered_priced_and_applied(
    uapi: Api, tmp_path: Path, adapter_files: dict[str, bytes]
) -> None:
    base = _image(await uapi.post("/api/v1/images", json=_body()))
    created = await upload(
        uapi,
        "up-glass",
        adapter_files["glass"],
        models=MODEL,
        default_scale="0.8",
        description="stained glass",
        price_first_mp="0.03",
        price_extra_mp="0.003",
    )
    assert created.status_code == 201, created.text
    item = created.json()["data"]
    assert item == {
        "name": "up-glass",
        "models": [MODEL],
        "default_scale": 0.8,
        "price": {"first_mp": 0.03, "extra_mp": 0.003},
        "description": "stained glass",
        "rank": 4,
        "dtype": item["dtype"],
        "status": "ready",
        "reason": None,
        "fused": False,
    }
    assert item["dtype"]
    assert (await _listed(uapi))["up-glass"] == item
    # Stored under a name of ours, not the client's file name.
    (stored,) = _stored(tmp_path)
    assert stored.startswith("up-glass-") and stored != "adapter.safetensors"

    glassed = await uapi.post("/api/v1/images", json=_body(loras=[{"name": "up-glass"}]))
    assert _image(glassed) != base
    assert glassed.json()["usage"]["cost"] == pytest.approx(0.03)  # the upload's price
    variant = await uapi.post("/api/v1/images", json=_body(model=f"{MODEL}:up-glass"))
    assert _image(variant) == _image(glassed)
    ids = [m["id"] for m in (await uapi.get("/api/v1/models")).json()["data"]]
    assert f"{MODEL}:up-glass" in ids

    removed = await uapi.client.delete("/api/v1/loras/up-glass", headers=uapi.auth(uapi.admin_key))
    assert removed.status_code == 200, removed.text


async def test_uploads_need_a_management_key(
    uapi: Api, tmp_path: Path, adapter_files: dict[str, bytes]
) -> None:
    inference = await upload(uapi, "by-inference", adapter_files["ink"], key=uapi.key)
    assert inference.status_code == 403, inference.text
    assert inference.json()["error"]["metadata"]["error_type"] == "permission_denied"
    anonymous = await uapi.client.post(
        "/api/v1/loras", files={"file": ("a.safetensors", adapter_files["ink"])}, data={"name": "x"}
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["metadata"]["error_type"] == "authentication"
    assert "by-inference" not in await _listed(uapi) and _stored(tmp_path) == []
    deleting = await uapi.client.delete("/api/v1/loras/configured", headers=uapi.auth(uapi.key))
    assert deleting.status_code == 403


@pytest.mark.parametrize(
    ("file", "says"),
    [
        ("random", "is not a safetensors file"),
        ("truncated", "The uploaded safetensors file is truncated"),
        ("full", "The adapter was refused: transformer.proj_out.weight is not a LoRA factor"),
        ("wider", "in this transformer but the adapter's is"),
        ("deeper", "which this transformer does not have: an adapter for another model"),
    ],
)
async def test_a_corrupt_or_foreign_file_is_refused_and_leaves_nothing(
    uapi: Api, tmp_path: Path, adapter_files: dict[str, bytes], file: str, says: str
) -> None:
    before = uapi.app.state.px.settings.loras.describe()  # type: ignore[attr-defined]
    response = await upload(uapi, f"bad-{file}", adapter_files[file])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and error["metadata"]["error_type"] == "invalid_request"
    assert says in error["message"]
    assert uapi.app.state.px.settings.loras.describe() == before  # type: ignore[attr-defined]
    assert _stored(tmp_path) == []
    assert not (tmp_path / "data" / "loras" / "uploads.json").exists()


@pytest.mark.parametrize(
    ("name", "fields", "says"),
    [
        ("Bad Name", {}, "LoRA upload: 'name' must be 1-64 lower-case letters"),
        (None, {}, "'name' must be 1-64 lower-case letters"),
        ("s", {"default_scale": "5"}, "'default_scale' must be between -4 and 4; got 5"),
        ("s", {"default_scale": "strong"}, "'default_scale' must be a number; got 'strong'"),
        ("s", {"models": "nope/model"}, "model 'nope/model' is not in the catalogue"),
        ("s", {"price_extra_mp": "0.1"}, "price needs first_mp"),
        ("s", {"price_first_mp": "-1"}, "price.first_mp must be a non-negative number"),
        ("s", {"price_first_mp": "nan"}, "price.first_mp must be a non-negative number"),
        ("s", {"price_first_mp": "0.01", "price_extra_mp": "inf"}, "price.extra_mp must be"),
        ("s", {"default_scale": "nan"}, "'default_scale' must be between -4 and 4; got nan"),
        ("s", {"path": "/etc/passwd"}, "Unknown field 'path'"),
    ],
)
async def test_bad_fields_are_400s_checked_like_config_tables(
    uapi: Api, tmp_path: Path, adapter_files: dict[str, bytes], name: Any, fields: Any, says: str
) -> None:
    response = await upload(uapi, name, adapter_files["ink"], **fields)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]
    assert _stored(tmp_path) == []


async def test_a_body_that_is_not_an_upload_is_a_400(uapi: Api) -> None:
    as_json = await uapi.post("/api/v1/loras", key=uapi.admin_key, json={"name": "x"})
    assert as_json.status_code == 400 and "multipart/form-data" in as_json.text
    no_file = await uapi.post("/api/v1/loras", key=uapi.admin_key, files={"name": (None, "x")})
    assert no_file.status_code == 400 and "needs a 'file' part" in no_file.text


async def test_a_taken_name_is_a_409(uapi: Api, adapter_files: dict[str, bytes]) -> None:
    configured = await upload(uapi, "configured", adapter_files["ink"])
    assert configured.status_code == 409, configured.text
    assert configured.json()["error"]["metadata"]["reason"] == "name_taken"
    first = await upload(uapi, "twice", adapter_files["ink"])
    assert first.status_code == 201, first.text
    second = await upload(uapi, "twice", adapter_files["glass"])
    assert second.status_code == 409 and "already registered" in second.text
    assert (
        await uapi.client.delete("/api/v1/loras/twice", headers=uapi.auth(uapi.admin_key))
    ).status_code == 200


async def test_an_upload_over_the_limit_is_a_413(
    tmp_path: Path, upload_provider: Any, adapter_files: dict[str, bytes]
) -> None:
    registry = upload_provider.engine.cfg.loras
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(
        tmp_path, db, [upload_provider], loras=registry, max_lora_upload_mb=1
    ):
        big = adapter_files["ink"] + os.urandom(1024 * 1024)
        declared = await upload(api, "big", big)  # a Content-Length over the limit
        assert declared.status_code == 413, declared.text
        assert declared.json()["error"]["metadata"]["error_type"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no length: counted as it streams
            yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            for _ in range(40):
                yield os.urandom(64 * 1024)

        streamed = await api.client.post(
            "/api/v1/loras",
            content=chunks(),
            headers={**api.auth(api.admin_key), "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert streamed.status_code == 413, streamed.text
        assert streamed.json()["error"]["metadata"]["error_type"] == "payload_too_large"
        assert streamed.headers["connection"] == "close"
        assert "big" not in await _listed(api) and _stored(tmp_path) == []
        # Other bodies keep the server's own limit, and a small upload passes.
        small = await upload(api, "small", adapter_files["ink"])
        assert small.status_code == 201, small.text
        await api.client.delete("/api/v1/loras/small", headers=api.auth(api.admin_key))


async def test_a_gateway_without_an_engine_takes_no_uploads(
    tmp_path: Path, adapter_files: dict[str, bytes]
) -> None:
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [], loras=LoraRegistry()):
        response = await upload(api, "ink", adapter_files["ink"])
        assert response.status_code == 409, response.text
        assert response.json()["error"]["metadata"]["reason"] == "no_local_engine"
        assert "upload it to the worker" in response.json()["error"]["message"]


async def test_delete_removes_an_upload_everywhere(
    uapi: Api, tmp_path: Path, upload_provider: Any, adapter_files: dict[str, bytes]
) -> None:
    assert (await upload(uapi, "gone", adapter_files["ink"])).status_code == 201
    assert _image(await uapi.post("/api/v1/images", json=_body(loras=[{"name": "gone"}])))
    assert "gone" in upload_provider.engine.status()["loras"]["loaded"]

    removed = await uapi.client.delete("/api/v1/loras/gone", headers=uapi.auth(uapi.admin_key))
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"deleted": True, "data": {"name": "gone"}}
    assert "gone" not in await _listed(uapi)
    ids = [m["id"] for m in (await uapi.get("/api/v1/models")).json()["data"]]
    assert f"{MODEL}:gone" not in ids
    refused = await uapi.post("/api/v1/images", json=_body(loras=[{"name": "gone"}]))
    assert refused.status_code == 400
    assert "unknown LoRA adapter 'gone'" in refused.json()["error"]["message"]
    variant = await uapi.post("/api/v1/images", json=_body(model=f"{MODEL}:gone"))
    assert variant.status_code == 404
    assert _stored(tmp_path) == []
    for _ in range(100):  # unloaded on the engine's thread, at its next gap
        if "gone" not in upload_provider.engine.status()["loras"]["loaded"]:
            break
        await asyncio.sleep(0.05)
    assert "gone" not in upload_provider.engine.status()["loras"]["loaded"]

    again = await uapi.client.delete("/api/v1/loras/gone", headers=uapi.auth(uapi.admin_key))
    assert again.status_code == 404 and "No uploaded LoRA adapter 'gone'" in again.text
    # The name is free again.
    reused = await upload(uapi, "gone", adapter_files["glass"])
    assert reused.status_code == 201, reused.text
    await uapi.client.delete("/api/v1/loras/gone", headers=uapi.auth(uapi.admin_key))


async def test_a_config_adapter_cannot_be_deleted(uapi: Api) -> None:
    response = await uapi.client.delete(
        "/api/v1/loras/configured", headers=uapi.auth(uapi.admin_key)
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"]["metadata"]["reason"] == "configured"
    assert "pixelrouter.toml" in response.json()["error"]["message"]
    assert (await _listed(uapi))["configured"]["status"] == "ready"


async def _behind_a_large_image(api: Api, engine: Any, bodies: list[Any]) -> list[Any]:
    """Tasks posting `bodies`, started once a large image keeps the engine busy and returned
    once all of them are queued behind it."""
    blocker = asyncio.create_task(api.post("/api/v1/images", json=_body(size="1024x1024")))
    for _ in range(500):
        if engine.status()["running_batch"]:
            break
        await asyncio.sleep(0.01)
    tasks = [asyncio.create_task(api.post("/api/v1/images", json=body)) for body in bodies]
    for _ in range(500):
        if engine.status()["queue_depth"] == len(bodies):
            break
        await asyncio.sleep(0.01)
    assert engine.status()["queue_depth"] == len(bodies) and engine.status()["running_batch"]
    return [blocker, *tasks]


async def test_requests_queued_with_a_deleted_adapter_finish_with_it(
    uapi: Api, upload_provider: Any, adapter_files: dict[str, bytes]
) -> None:
    engine = upload_provider.engine
    assert (await upload(uapi, "queued", adapter_files["glass"])).status_code == 201
    alone = {"loras": [{"name": "queued", "scale": 1}], "image_config": {"batching": False}}
    bodies = [_body(seed=seed, **alone) for seed in (1, 2, 3)]
    expected = [
        _image(r) for r in await asyncio.gather(*await _behind_a_large_image(uapi, engine, bodies))
    ]

    tasks = await _behind_a_large_image(uapi, engine, bodies)
    removed = await uapi.client.delete("/api/v1/loras/queued", headers=uapi.auth(uapi.admin_key))
    assert removed.status_code == 200
    late = await uapi.post("/api/v1/images", json=_body(loras=[{"name": "queued"}]))
    assert late.status_code == 400
    assert [_image(r) for r in await asyncio.gather(*tasks)] == expected
    for _ in range(100):
        if "queued" not in engine.status()["loras"]["loaded"]:
            break
        await asyncio.sleep(0.05)
    assert "queued" not in engine.status()["loras"]["loaded"]


async def test_uploads_are_kept_across_a_restart(
    tmp_path: Path, upload_provider: Any, adapter_files: dict[str, bytes]
) -> None:
    """Two app instances on the same data directory, each with its own engine."""
    from pixelrouter.engine.pipeline import EngineConfig
    from pixelrouter.providers.local import LocalProvider

    db = f"sqlite:///{tmp_path / 'px.db'}"
    registry = upload_provider.engine.cfg.loras
    async for first in make_api(tmp_path, db, [upload_provider], loras=registry):
        created = await upload(first, "kept", adapter_files["ink"], price_first_mp="0.05")
        assert created.status_code == 201, created.text
        before = _image(await first.post("/api/v1/images", json=_body(model=f"{MODEL}:kept")))
    registry.remove("kept")  # the first instance's engine stays up; this one forgets it

    restarted = LoraRegistry()
    provider = LocalProvider(config=EngineConfig(demo=True, device="cpu", loras=restarted))
    try:
        async for second in make_api(tmp_path, db, [provider], loras=restarted):
            assert provider.engine.wait_ready(180)
            for _ in range(200):
                if (await _listed(second)).get("kept", {}).get("status") == "ready":
                    break
                await asyncio.sleep(0.05)
            kept = (await _listed(second))["kept"]
            assert kept["status"] == "ready" and kept["price"] == {"first_mp": 0.05, "extra_mp": 0}
            after = await second.post("/api/v1/images", json=_body(model=f"{MODEL}:kept"))
            assert _image(after) == before
            assert after.json()["usage"]["cost"] == pytest.approx(0.05)
    finally:
        provider.engine.shutdown()


def _hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache as huggingface_hub lays it out: refs/main naming a snapshot that
    holds the repository's files."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    for name, content in files.items():
        path = folder / "snapshots" / sha / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder / "snapshots" / sha


async def test_hugging_face_references_are_read_from_the_cache(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    upload_provider: Any,
    adapter_files: dict[str, bytes],
) -> None:
    """hf://owner/repo (diffusers' weight name) and hf://owner/repo/file.safetensors, resolved
    offline from a cache laid out as huggingface_hub does; one not in the cache is refused at
    registration, saying so."""
    from pixelrouter.errors import NotFound
    from pixelrouter.lora_files import local_path

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no test reaches the hub
    cache = tmp_path / "hub"
    snapshot = _hf_cache(
        cache,
        "someone/ink-lora",
        {WEIGHTS: adapter_files["ink"], "v2/glass.safetensors": adapter_files["glass"]},
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert Path(local_path("hf://someone/ink-lora")).read_bytes() == adapter_files["ink"]
    resolved = local_path("hf://someone/ink-lora/v2/glass.safetensors")
    assert Path(resolved) == snapshot / "v2" / "glass.safetensors"
    with pytest.raises(NotFound, match="is not in the Hugging Face cache and the hub cannot be"):
        local_path("hf://someone/other-lora")

    engine = upload_provider.engine
    try:
        accepted = await engine.register_lora(
            LoraSpec("hub-glass", "hf://someone/ink-lora/v2/glass.safetensors")
        )
        assert accepted.ok and accepted.rank == 4, accepted.reason
        refused = await engine.register_lora(LoraSpec("hub-missing", "hf://someone/other-lora"))
        assert (
            not refused.ok
            and "pytorch_lora_weights.safetensors of someone/other-lora is not in" in refused.reason
        )
        assert engine.cfg.loras.get("hub-missing") is None
    finally:
        await asyncio.wrap_future(engine.unregister_lora("hub-glass"))


@pytest.mark.parametrize(
    "path", ["hf://someone", "hf://someone/repo/weights.bin", "hf://someone/repo/../x.safetensors"]
)
def test_a_malformed_hugging_face_reference_stops_the_config(tmp_path: Path, path: str) -> None:
    from pixelrouter.errors import ConfigError
    from pixelrouter.loras import parse_lora_tables

    with pytest.raises(ConfigError, match="a Hugging Face reference is hf://owner/repo"):
        parse_lora_tables([{"name": "x", "path": path}], tmp_path)
    (spec,) = parse_lora_tables([{"name": "x", "path": "hf://someone/repo"}], tmp_path)
    assert spec.path == "hf://someone/repo"  # kept as it is, not made relative to the file


async def test_the_openapi_document_describes_uploads(uapi: Api) -> None:
    paths = (await uapi.client.get("/openapi.json")).json()["paths"]
    upload = paths["/api/v1/loras"]["post"]
    assert upload["summary"].startswith("Upload a LoRA adapter")
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["file", "name"]
    assert set(upload["responses"]) >= {"201", "400", "401", "403", "409", "413"}
    assert "get" in paths["/api/v1/loras"]
    assert paths["/api/v1/loras/{name}"]["delete"]["summary"].startswith("Remove an uploaded")


async def test_an_upload_that_stalls_is_a_408(tmp_path: Path, upload_provider: Any) -> None:
    """The upload's body streams to the route, so the edge's deadline is per part: a client
    that stops sending gets a 408 and holds nothing."""
    registry = upload_provider.engine.cfg.loras
    db = f"sqlite:///{tmp_path / 'px.db'}"
    async for api in make_api(tmp_path, db, [upload_provider], loras=registry, body_timeout_s=0.3):

        async def stalls() -> AsyncIterator[bytes]:
            yield b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nslow\r\n'
            await asyncio.sleep(2)
            yield b"--b--\r\n"

        response = await api.client.post(
            "/api/v1/loras",
            content=stalls(),
            headers={**api.auth(api.admin_key), "Content-Type": "multipart/form-data; boundary=b"},
        )
        assert response.status_code == 408, response.text
        assert response.json()["error"]["metadata"]["error_type"] == "timeout"
        assert "slow" not in await _listed(api) and _stored(tmp_path) == []
