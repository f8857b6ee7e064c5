"""LoRA adapter files: uploads (`POST /api/v1/loras`) checked for a safetensors header, stored
under a name of our own in `lora_dir` and listed in its manifest so they come back after a
restart; and Hugging Face references (`hf://owner/repo[/file.safetensors]`) resolved to a file
in the local Hugging Face cache.

No torch here: the gateway stores and lists files, the engine (`engine/adapters.py`) reads them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import Any, BinaryIO

from pixelrouter.catalog import Catalog, micro_to_usd
from pixelrouter.errors import ConfigError, InvalidRequest, NotFound
from pixelrouter.loras import (
    HF_REFERENCE,
    HF_SCHEME,
    LoraRegistry,
    LoraSpec,
    parse_lora_tables,
)

MANIFEST = "uploads.json"  # in lora_dir: the uploaded adapters, as [[loras]] tables
HEADER_LIMIT = 100 * 1024 * 1024  # what the safetensors library itself accepts for a header
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' name, for hf://owner/repo


def check_safetensors(file: BinaryIO, size: int) -> None:
    """A 400 unless `file` is laid out as a safetensors file: an 8-byte little-endian header
    length, a JSON object of that length naming each tensor's byte range, and those bytes
    present (a truncated upload is refused here). The weights themselves are the engine's to
    check."""
    file.seek(0)
    head = file.read(8)
    length = int.from_bytes(head, "little") if len(head) == 8 else 0
    if length < 2 or length > min(HEADER_LIMIT, size - 8):
        raise InvalidRequest(
            "The uploaded file is not a safetensors file: it must start with an 8-byte header "
            "length and a JSON header (diffusers' save_lora_weights writes such a file).",
            metadata={"param": "file"},
        )
    try:
        header = json.loads(file.read(length))
    except (ValueError, UnicodeDecodeError):
        header = None
    end = 0
    valid = isinstance(header, dict)
    for key, info in header.items() if isinstance(header, dict) else ():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            valid = False
            break
        end = max(end, offsets[1])
    if not valid:
        raise InvalidRequest(
            "The uploaded file is not a safetensors file: its header is not a JSON object of "
            "tensors with data_offsets.",
            metadata={"param": "file"},
        )
    if 8 + length + end > size:
        raise InvalidRequest(
            f"The uploaded safetensors file is truncated: its header describes {end} bytes of "
            f"tensors, the file holds {size - 8 - length}.",
            metadata={"param": "file"},
        )
    file.seek(0)


class LoraUploads:
    """The adapters uploaded to this server: their files in `directory` (named `<adapter>-<random
    hex>.safetensors`, never the client's file name) and `uploads.json`, a list of `[[loras]]`
    tables whose `path` is the file's name there. Read at start like the config file's tables."""

    def __init__(self, directory: Path, catalog: Catalog | None = None) -> None:
        self.directory = directory
        self.catalog = catalog or Catalog()
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    def _tables(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.manifest.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the uploaded adapters' list {self.manifest}: {exc}"
            ) from exc
        tables = data.get("loras") if isinstance(data, dict) else None
        if not isinstance(tables, list):
            raise ConfigError(f'{self.manifest} must hold {{"loras": [...]}}.')
        return tables

    def specs(self) -> list[LoraSpec]:
        """The uploaded adapters, checked as `[[loras]]` tables are (a broken list stops the
        server at start, naming the file)."""
        with self._lock:
            tables = self._tables()
        try:
            return parse_lora_tables(
                tables, self.directory, self.catalog, source=str(self.manifest)
            )
        except ConfigError as exc:
            raise ConfigError(f"cannot read the uploaded adapters' list: {exc}") from exc

    def names(self) -> set[str]:
        with self._lock:
            return {str(table.get("name")) for table in self._tables()}

    def store(self, name: str, source: BinaryIO) -> Path:
        """Copy an upload into the directory under a fresh name of our own; returns its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}-{secrets.token_hex(4)}.safetensors"
        partial = path.with_suffix(".part")
        source.seek(0)
        try:
            with partial.open("wb") as target:
                shutil.copyfileobj(source, target, 1024 * 1024)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def add(self, spec: LoraSpec) -> None:
        """List an adapter whose file `store` wrote (its path inside the directory)."""
        table: dict[str, Any] = {
            "name": spec.name,
            "path": Path(spec.path).name,
            "models": list(spec.models),
            "default_scale": spec.default_scale,
            "description": spec.description,
        }
        if spec.price is not None:
            table["price"] = {
                "first_mp": micro_to_usd(spec.price.first_mp),
                "extra_mp": micro_to_usd(spec.price.extra_mp),
            }
        with self._lock:
            tables = [t for t in self._tables() if t.get("name") != spec.name]
            self._write([*tables, table])

    def remove(self, name: str) -> bool:
        """Unlist the adapter and delete its file; False if it was not uploaded here."""
        with self._lock:
            tables = self._tables()
            kept = [t for t in tables if t.get("name") != name]
            if len(kept) == len(tables):
                return False
            self._write(kept)
        for table in tables:
            if table.get("name") == name and isinstance(table.get("path"), str):
                (self.directory / Path(table["path"]).name).unlink(missing_ok=True)
        return True

    def _write(self, tables: list[dict[str, Any]]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.manifest.with_suffix(".json.part")
        partial.write_text(json.dumps({"loras": tables}, indent=2) + "\n")
        os.replace(partial, self.manifest)


def restore_uploads(uploads: LoraUploads, registry: LoraRegistry) -> None:
    """The adapters uploaded before a restart, registered like the config file's tables (a name
    in both stops the server: it would be two adapters under one name)."""
    for spec in uploads.specs():
        if registry.get(spec.name) is not None:
            raise ConfigError(
                f"The LoRA adapter {spec.name!r} is both in [[loras]] and uploaded to "
                f"{uploads.directory}: remove one of them."
            )
        registry.add(spec)


def local_path(path: str) -> str:
    """The local file of an adapter's `path`: itself, or for `hf://owner/repo[/file]` the file
    in the Hugging Face cache, downloaded first when the hub can be reached (`HF_HUB_OFFLINE`
    and `HF_HUB_CACHE` apply, as in diffusers). A 404 that says why when it cannot be had."""
    if not path.startswith(HF_SCHEME):
        return path
    match = HF_REFERENCE.match(path)
    if match is None:
        raise NotFound(f"{path} is not a Hugging Face reference hf://owner/repo[/file.safetensors]")
    repo_id, filename = match.group(1), match.group(2) or WEIGHT_NAME
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # HF_HUB_CACHE read now, not when huggingface_hub was imported (else HF_HOME/hub).
        return hf_hub_download(repo_id, filename, cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except LocalEntryNotFoundError:
        raise NotFound(
            f"{path}: {filename} of {repo_id} is not in the Hugging Face cache and the hub "
            "cannot be reached (offline, or HF_HUB_OFFLINE is set); download it on a machine "
            "that is online (huggingface-cli download) or name a local file"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise NotFound(
            f"{path} could not be downloaded from the Hugging Face hub ({exc})"
        ) from None
