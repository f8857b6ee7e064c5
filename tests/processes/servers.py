"""Real `pixelrouter serve` processes for one test: started on free loopback ports, stopped
(killed if need be) after it, their logs at hand.

The process plumbing (free port, readiness wait, graceful stop, log tail, environment) is the
end-to-end suite's, imported from `tests/e2e`.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from e2e.conftest import _free_port, _stop, _tail, _wait_ready
from e2e.support import cli_command, cli_env
from pixelrouter.keys import generate_key
from pixelrouter.store import GenerationRecord, Store


@dataclass
class ServerProcess:
    """One `pixelrouter serve` process (alive or not) and where its output went."""

    name: str
    url: str
    admin_key: str
    db_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        """SIGKILL: no shutdown hook, no settlement, nothing flushed."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM and wait (uvicorn's graceful shutdown); SIGKILL if it hangs."""
        _stop(self.process)

    def create_key(self, limit: float | None = None, name: str = "processes") -> tuple[str, str]:
        """A new inference key through this server: (plaintext, hash)."""
        body: dict[str, object] = {"name": name}
        if limit is not None:
            body["limit"] = limit
        created = httpx.post(f"{self.api}/keys", json=body, headers=self.admin(), timeout=30)
        assert created.status_code == 201, created.text
        return created.json()["key"], created.json()["data"]["hash"]


@dataclass
class Launcher:
    """Starts servers for one test; every one of them is stopped when the test ends."""

    root: Path
    started: list[ServerProcess] = field(default_factory=list)

    def start(
        self,
        name: str,
        db_url: str,
        *,
        admin_key: str | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = ("--demo",),
        wait: bool = True,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> ServerProcess:
        """`pixelrouter serve ARGS --db DB_URL` on `host` and a free port (or `port`); ready
        unless `wait=False`."""
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        log = directory / f"server-{len(self.started)}.log"
        admin_key = admin_key or generate_key()
        port = port or _free_port()
        command = [
            *cli_command(),
            "serve",
            *args,
            "--host",
            host,
            "--port",
            str(port),
            "--db",
            db_url,
        ]
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                command,
                cwd=directory,
                env={**cli_env(directory / "data", admin_key), **(env or {})},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = ServerProcess(name, f"http://{host}:{port}", admin_key, db_url, process, log)
        self.started.append(server)
        if wait:
            self.wait_ready(server)
        return server

    def wait_ready(self, server: ServerProcess) -> None:
        _wait_ready(server.url, server.process, server.log_path)

    def stop_all(self) -> None:
        for server in self.started:
            try:
                server.stop()
            except Exception:  # never leave a process behind
                server.process.kill()

    def log_tails(self) -> str:
        return "\n".join(
            f"---- {s.name} (pid {s.process.pid}, exit {s.process.returncode}) "
            f"{s.log_path} ----\n{_tail(s.log_path)}"
            for s in self.started
        )


def closed_records(store: Store, deadline_s: float = 60.0) -> dict[str, GenerationRecord]:
    """Every generation record by id, once none is pending and no reservation is open (the
    server closes what a restart interrupted in its own time); fails after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        records = {g.id: g for g in store.list_generations(limit=1000)}
        open_ = store.open_reservations()
        pending = [g for g in records.values() if g.state == "pending"]
        if not open_ and not pending:
            return records
        assert time.monotonic() < deadline, (open_, pending)
        time.sleep(0.25)
