"""LoRA adapters uploaded and removed at run time (docs/loras.md): `POST /api/v1/loras`
(multipart, a management key) checks the file, stores it in `lora_dir` and registers it with
the local engine; `DELETE /api/v1/loras/{name}` removes an uploaded one. `GET /api/v1/loras`
is in `catalog.py`."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import FormData, UploadFile

from pixelrouter.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    NotFound,
    PixelrouterError,
)
from pixelrouter.lora_files import LoraUploads, check_safetensors
from pixelrouter.loras import lora_json, parse_lora_tables
from pixelrouter.providers.local import LocalProvider
from pixelrouter.store import KeyRecord

from ..auth import management_key
from ..responses import OrjsonResponse
from ..schemas import LoraDeleted, LoraResponse
from ..state import AppState, app_state
from .openapi import BEARER, MANAGEMENT_ERRORS, errors, ok

if TYPE_CHECKING:
    from pixelrouter.engine.scheduler import Engine

router = APIRouter(tags=["loras"], dependencies=BEARER, responses=errors(*MANAGEMENT_ERRORS, 409))

UPLOAD_PATH = "/api/v1/loras"  # its body is streamed (`EdgeMiddleware.uploads`)
# The form's text fields: a `[[loras]]` table's keys but `path` (the file part is the path) and
# `price`, given as two numbers.
UPLOAD_FIELDS = (
    "name",
    "models",
    "default_scale",
    "description",
    "price_first_mp",
    "price_extra_mp",
)

UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The adapter: a diffusers/PEFT .safetensors file",
                        },
                        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
                        "models": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Model ids (repeat the field, or one comma list); "
                            "default: the catalogue's first model",
                        },
                        "default_scale": {"type": "number", "minimum": -4, "maximum": 4},
                        "description": {"type": "string"},
                        "price_first_mp": {
                            "type": "number",
                            "description": "USD for an image's first megapixel with it",
                        },
                        "price_extra_mp": {
                            "type": "number",
                            "description": "USD for each further megapixel",
                        },
                    },
                }
            }
        },
    }
}


def local_engine(px: AppState) -> Engine | None:
    for provider in px.providers:
        if isinstance(provider, LocalProvider):
            return provider.engine
    return None


def _uploads(px: AppState) -> LoraUploads:
    if px.lora_uploads is None:
        raise Conflict(
            "This server keeps no uploaded adapters.", metadata={"reason": "no_lora_dir"}
        )
    return px.lora_uploads


@router.post(
    "/loras",
    summary="Upload a LoRA adapter (multipart/form-data, a management key)",
    status_code=201,
    responses=ok(LoraResponse, status=201),
    openapi_extra=UPLOAD_FORM,
)
async def upload_lora(request: Request, key: KeyRecord = Depends(management_key)) -> OrjsonResponse:
    """Check the file (a safetensors header, then the engine loads it and checks every target
    against this transformer), store it and register it: 201 with the adapter as
    `GET /api/v1/loras` lists it, `status: ready`. A refusal stores and registers nothing."""
    px = app_state(request)
    uploads = _uploads(px)
    engine = local_engine(px)
    if engine is None:
        raise Conflict(
            "This server has no local engine (--no-engine), so it cannot check or serve an "
            "adapter: upload it to the worker that serves the model, and declare its name here "
            "in [[loras]] (docs/loras.md, Routing to workers).",
            metadata={"reason": "no_local_engine"},
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "POST /api/v1/loras takes multipart/form-data: a 'file' part and a 'name' field."
        )
    try:
        form = await request.form(max_files=1, max_fields=32)
    except PixelrouterError:
        raise  # the size limit or the body's deadline
    except Exception as exc:
        raise InvalidRequest(f"The multipart body could not be parsed ({exc}).") from exc
    try:
        async with px.lora_lock:
            return await _register_upload(px, engine, uploads, form)
    finally:
        await form.close()


async def _register_upload(
    px: AppState, engine: Engine, uploads: LoraUploads, form: FormData
) -> OrjsonResponse:
    file, table = _upload_table(form)
    try:
        (spec,) = parse_lora_tables(
            [{**table, "path": "upload"}], uploads.directory, px.catalog, source="LoRA upload"
        )
    except ConfigError as exc:
        raise InvalidRequest(str(exc), metadata={"param": "name"}) from None
    if px.settings.loras.get(spec.name) is not None or spec.name in uploads.names():
        raise Conflict(
            f"A LoRA adapter named {spec.name!r} is already registered: choose another name, or "
            f"remove it first (DELETE /api/v1/loras/{spec.name}; one from pixelrouter.toml is "
            "removed there).",
            metadata={"reason": "name_taken", "param": "name"},
        )
    await asyncio.to_thread(check_safetensors, file.file, file.size or 0)
    path = await asyncio.to_thread(uploads.store, spec.name, file.file)
    spec = dataclasses.replace(spec, path=str(path))
    try:
        check = await engine.register_lora(spec)
        if not check.ok:
            raise InvalidRequest(
                f"The adapter was refused: {check.reason}.",
                metadata={"param": "file", "reason": check.reason},
            )
        try:
            await asyncio.to_thread(uploads.add, spec)
        except BaseException:
            engine.unregister_lora(spec.name)
            raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return OrjsonResponse({"data": lora_json(spec, check)}, status_code=201)


def _upload_table(form: FormData) -> tuple[UploadFile, dict[str, Any]]:
    """The form as a `[[loras]]` table (checked by `parse_lora_tables`) and its file."""
    file: UploadFile | None = None
    table: dict[str, Any] = {}
    models: list[str] = []
    price: dict[str, Any] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            if name != "file":
                raise InvalidRequest(f"Unexpected file part {name!r}: send the adapter as 'file'.")
            file = value
        elif name not in UPLOAD_FIELDS:
            raise InvalidRequest(
                f"Unknown field {name!r}; the fields are file, {', '.join(UPLOAD_FIELDS)}.",
                metadata={"param": name},
            )
        elif name == "models":
            models += [m.strip() for m in value.split(",") if m.strip()]
        elif name in ("price_first_mp", "price_extra_mp"):
            price[name.removeprefix("price_")] = _number(value)
        elif name == "default_scale":
            table[name] = _number(value)
        else:
            table[name] = value
    if file is None:
        raise InvalidRequest(
            "The upload needs a 'file' part: the adapter's .safetensors file.",
            metadata={"param": "file"},
        )
    if models:
        table["models"] = models
    if price:
        table["price"] = price
    return file, table


def _number(text: str) -> Any:
    """A form field as a number where it reads as one; else the text, which the table checks
    then refuse with their own message."""
    try:
        return float(text)
    except ValueError:
        return text


@router.delete(
    "/loras/{name}",
    summary="Remove an uploaded LoRA adapter (a management key)",
    responses=ok(LoraDeleted),
)
async def delete_lora(
    name: str, request: Request, key: KeyRecord = Depends(management_key)
) -> OrjsonResponse:
    """The adapter leaves the registry, `/models` and `GET /api/v1/loras` at once, and a
    request naming it from then on is a 400; requests queued with it still finish, and its
    weights leave the pipeline after them. Its file is deleted. Adapters of pixelrouter.toml
    are removed there (409)."""
    px = app_state(request)
    uploads = _uploads(px)
    async with px.lora_lock:
        if name not in await asyncio.to_thread(uploads.names):
            if px.settings.loras.get(name) is not None:
                raise Conflict(
                    f"The LoRA adapter {name!r} is registered in the config file ([[loras]] in "
                    "pixelrouter.toml), not uploaded: remove its table there and restart.",
                    metadata={"reason": "configured"},
                )
            uploaded = sorted(await asyncio.to_thread(uploads.names))
            raise NotFound(
                f"No uploaded LoRA adapter {name!r}. Uploaded: {', '.join(uploaded) or 'none'}.",
                metadata={"available": uploaded},
            )
        engine = local_engine(px)
        if engine is not None:
            engine.unregister_lora(name)
        else:
            px.settings.loras.remove(name)
        await asyncio.to_thread(uploads.remove, name)
    return OrjsonResponse({"deleted": True, "data": {"name": name}})
