"""What the routing end-to-end tests share: fake upstreams served from a background event loop,
gateway configurations written as `[[providers]]` TOML, and a client of a gateway process that
reads back the generation record (the attempts) of every answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from processes.servers import Launcher, ServerProcess
from providers.upstreams import ProtocolFake

MODEL = "black-forest-labs/flux.2-klein-4b"
PRICE_1MP = 14_000  # micro-dollars: one image of at most 1 MP at klein 4B's price
TIMEOUT = httpx.Timeout(120, connect=10)

F = TypeVar("F", bound=ProtocolFake)


class FakeHub:
    """Fake upstreams (`tests/providers/upstreams.py`) on loopback ports, served by an event
    loop on a daemon thread, so synchronous tests and other processes can talk to them while
    a test flips their faults."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fakes: list[ProtocolFake] = []

    def _run(self, work: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def start(self, fake: F) -> F:
        self._run(fake.__aenter__())
        self.fakes.append(fake)
        return fake

    def close(self) -> None:
        try:
            for fake in reversed(self.fakes):
                with contextlib.suppress(Exception):  # one stuck fake must not keep the rest
                    self._run(fake.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


# ------------------------------------------------------------------------ configuration


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def provider_table(name: str, kind: str, url: str, **fields: Any) -> str:
    """One `[[providers]]` table: `provider_table("worker-a", "pixelrouter", url,
    display_name="Worker A", price={"first_mp": 0.014}, api_key="env:WORKER_A_KEY")`."""
    lines = ["[[providers]]", f"name = {_toml(name)}", f"type = {_toml(kind)}"]
    lines += [f"url = {_toml(url)}"]
    lines += [f"{key} = {_toml(value)}" for key, value in fields.items() if value is not None]
    return "\n".join(lines) + "\n"


def worker_tables(workers: list[tuple[str, str, str, Any]]) -> list[str]:
    """`pixelrouter` provider tables for demo workers `(slug, display name, key variable,
    ServerProcess)`, at one price (so equal workers share the load) and one set of timeouts."""
    return [
        provider_table(
            slug,
            "pixelrouter",
            worker.api,
            display_name=name,
            api_key=f"env:{variable}",
            price={"first_mp": 0.014, "extra_mp": 0.001},
            timeouts={"connect_s": 2, "first_byte_s": 30, "total_s": 60},
        )
        for slug, name, variable, worker in workers
    ]


def write_config(path: Path, tables: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------ gateway


@dataclass
class Gateway:
    """A `pixelrouter serve --no-engine --config FILE` process and an inference key on it."""

    server: ServerProcess
    key: str
    key_hash: str

    @property
    def api(self) -> str:
        return self.server.api

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def images(
        self,
        provider: dict[str, Any] | None = None,
        *,
        size: str = "64x64",
        client: httpx.Client | None = None,
        **body: Any,
    ) -> httpx.Response:
        """`POST /api/v1/images` through the gateway (one image of `size`)."""
        payload: dict[str, Any] = {"model": MODEL, "prompt": "routing", "size": size, **body}
        if provider is not None:
            payload["provider"] = provider
        post = client.post if client is not None else httpx.post
        response = post(f"{self.api}/images", json=payload, headers=self.auth(), timeout=TIMEOUT)
        assert response.headers.get("x-generation-id", "").startswith("gen-"), response.headers
        return response

    def generation(self, response: httpx.Response) -> dict[str, Any]:
        """The gateway's record of the generation that answered `response`."""
        generation_id = response.headers["x-generation-id"]
        found = httpx.get(
            f"{self.api}/generation",
            params={"id": generation_id},
            headers=self.auth(),
            timeout=30,
        )
        assert found.status_code == 200, found.text
        return found.json()["data"]

    def attempts(self, response: httpx.Response) -> list[tuple[str, int]]:
        """(provider name, status) of every attempt the record lists, in order."""
        return [
            (a["provider_name"], a["status"])
            for a in self.generation(response)["provider_responses"]
        ]

    def key_usage(self) -> float:
        found = httpx.get(f"{self.api}/key", headers=self.auth(), timeout=30)
        assert found.status_code == 200, found.text
        return float(found.json()["data"]["usage"])


def start_gateway(
    launcher: Launcher,
    config: Path,
    *,
    env: dict[str, str] | None = None,
    name: str = "gateway",
) -> Gateway:
    """A `--no-engine` gateway on the providers of `config`, ready, with an inference key."""
    server = launcher.start(
        name,
        f"sqlite:///{launcher.root / f'{name}.db'}",
        env=env,
        args=("--no-engine", "--config", str(config)),
    )
    key, key_hash = server.create_key(name="routing-e2e")
    return Gateway(server, key, key_hash)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The SPEC §5 envelope's `error`, checked: its code is the HTTP status."""
    error = response.json()["error"]
    assert error["code"] == response.status_code, response.text
    return error
