"""A PostgreSQL server of a test's own, on a free loopback port: for tests that restart or stop
the database under load, which must not touch the shared server the rest of the suite uses.

    with private_postgres() as cluster:
        url = cluster.url            # postgresql://postgres@127.0.0.1:PORT/postgres
        cluster.restart()            # a fast restart: every connection is dropped

Made with Debian's `initdb` and `pg_ctl`, as the `postgres` user when run as root (PostgreSQL
refuses to run as root). Without them the test is skipped loudly, and fails under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unavailable(reason: str) -> None:
    message = f"private PostgreSQL tests NOT RUN: {reason}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}. CI=true, so this is a failure.", pytrace=False)
    warnings.warn(message, pytest.PytestWarning, stacklevel=3)
    pytest.skip(message)


@dataclass
class PrivateCluster:
    directory: Path
    port: int
    bin_dir: Path
    user: str | None  # run as this user (root runs it as postgres)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = START_TIMEOUT_S) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")

    def _ctl(self, action: str, *extra: str) -> None:
        self._run(
            "pg_ctl",
            action,
            "-D",
            str(self.directory / "data"),
            "-l",
            str(self.directory / "server.log"),
            "-w",
            *extra,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("start", "-o", options)
        self.wait_accepting()

    def restart(self) -> None:
        """A fast restart: the server drops every connection, aborting what they were doing."""
        self._ctl("restart", "-m", "fast")
        self.wait_accepting()

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")

    def wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the private PostgreSQL on port {self.port} did not start")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivateCluster]:
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        _unavailable("no initdb/pg_ctl (Debian's postgresql package)")
    assert bin_dir is not None
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run the server as")
        user = "postgres"
    # Not under pytest's own temporary directory: the server's user must reach it.
    directory = Path(tempfile.mkdtemp(prefix="pixelrouter-pg-"))
    if user is not None:
        shutil.chown(directory, user)
    cluster = PrivateCluster(directory, _free_port(), bin_dir, user)
    try:
        cluster._run("initdb", "-D", str(directory / "data"), "-U", "postgres", "-A", "trust", "-N")
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
