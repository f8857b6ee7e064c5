"""Debian's PgBouncer in transaction pooling mode, on a free loopback port, in front of a
PostgreSQL server: what a fleet of gateways sits behind so that it does not exhaust the
server's connections. Used by the tests and by `bench/billing.py --pgbouncer`.

    with pgbouncer(upstream_port=5432) as bouncer:
        url = bouncer.url_for(database_url)   # the same database, through PgBouncer
        bouncer.kill()                          # SIGKILL: every client connection drops
        bouncer.start()                         # back on the same port

Transaction pooling hands each transaction whichever server connection is free, so nothing may
outlive a transaction: no server-side prepared statements (the store turns psycopg's off), no
session settings (`options=-csearch_path=...` is refused here, not silently dropped, so a test
through PgBouncer uses a database of its own), no session advisory locks. Without the
`pgbouncer` program (`make pgbouncer` installs it) the caller is skipped loudly, and fails
under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pgbouncer_program() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


def _unavailable(reason: str) -> None:
    message = f"PgBouncer tests NOT RUN: {reason} (make pgbouncer installs Debian's pgbouncer)"
    if os.environ.get("CI", "").lower() == "true":
        import pytest

        pytest.fail(f"{message}. CI=true, so this is a failure.", pytrace=False)
    try:
        import pytest
    except ImportError:  # the benchmark: no pytest there
        raise RuntimeError(message) from None
    warnings.warn(message, pytest.PytestWarning, stacklevel=3)
    pytest.skip(message)


@dataclass
class PgBouncer:
    """One pgbouncer process (running or not) and its folder."""

    program: str
    directory: Path
    port: int
    upstream_host: str
    upstream_port: int
    pool_size: int
    user: str | None  # run as this user (pgbouncer refuses to run as root)
    process: subprocess.Popen[bytes] | None = field(default=None)

    def url_for(self, url: str) -> str:
        """`url` (a database of the upstream server) through this PgBouncer."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def _write_config(self) -> Path:
        config = self.directory / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={self.upstream_host} port={self.upstream_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.directory / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 2000\n"
            # A server connection that broke goes; a client waits for a new one meanwhile.
            "server_login_retry = 1\n"
            "server_reset_query =\n"
            f"logfile = {self.directory / 'pgbouncer.log'}\n"
            f"pidfile = {self.directory / 'pgbouncer.pid'}\n"
        )
        (self.directory / "userlist.txt").write_text('"postgres" ""\n')
        return config

    def start(self) -> None:
        config = self._write_config()
        command = [self.program, str(config)]
        if self.user is not None:
            command[1:1] = ["-u", self.user]
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "pgbouncer.pid").unlink()
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start: {self.log()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen on {self.port}: {self.log()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: every client and server connection drops at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # immediate shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def pgbouncer(
    upstream_port: int = 5432, upstream_host: str = "127.0.0.1", pool_size: int = 20
) -> Iterator[PgBouncer]:
    """A started PgBouncer (transaction pooling) in front of `upstream_host:upstream_port`."""
    program = pgbouncer_program()
    if program is None:
        _unavailable("no pgbouncer program")
    assert program is not None
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run pgbouncer as")
        user = "postgres"
    directory = Path(tempfile.mkdtemp(prefix="pixelrouter-pgbouncer-"))
    if user is not None:
        shutil.chown(directory, user)
    bouncer = PgBouncer(
        program, directory, _free_port(), upstream_host, upstream_port, pool_size, user
    )
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(directory, ignore_errors=True)
