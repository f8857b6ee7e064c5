"""Gateway overhead: the latency pixelrouter adds in front of a fast upstream, compared in one run
with calling the upstream directly and with the Portkey gateway (see --help).

Run: .venv/bin/python bench/gateway.py [--rates 5,50,200,500] [--seconds 10] [--quick]
     [--json out.json] [--no-portkey]      (first: cd bench/portkey && npm ci)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from images import make_png

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PORTKEY_DIR = HERE / "portkey"
PORTKEY_ENTRY = (
    PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
)

USAGE = """\
Run: .venv/bin/python bench/gateway.py [--rates 5,50,200,500] [--seconds 10] [--quick]
     [--json out.json] [--no-portkey] [--targets direct,relay,...]
     [--client raw|httpx] [--workers 1] [--max-in-flight 256] [--timeout 15]
First, once: cd bench/portkey && npm ci   (the pinned @portkey-ai/gateway; without it the
Portkey rows are skipped and the reason is reported).

Starts, listening on 127.0.0.1 only:
  - a fast OpenAI-Images upstream (a raw asyncio protocol, uvloop when installed) answering every
    POST /v1/images/generations with one fixed, pre-encoded 1024x1024 PNG as b64_json (a smooth
    synthetic landscape with light grain: ~0.8 MB of PNG, ~1.1 MB of JSON);
  - two bare relays (a raw asyncio protocol in Python, uvloop) that pass the bytes between a
    client connection and its own upstream connection and do nothing else: `relay` as they come,
    `relay-buffered` each answer once it is whole (as a gateway that checks what it delivers
    must). They are the floor of an extra Python hop on this machine: what a gateway adds beyond
    them is its own work;
  - `pixelrouter serve --no-engine` with that upstream as its only provider (type openai-images,
    SQLite in a temporary folder, one inference key made with POST /api/v1/keys);
  - the Portkey gateway (node, --headless, NODE_ENV=production) routing to the same upstream
    with x-portkey-provider: openai and x-portkey-custom-host.
Each target must first return the upstream's PNG byte for byte. Then, for each offered rate, an
open-loop load runs against each target back to back (direct, the relays, pixelrouter, Portkey):
request k is sent at start + k / rate whether or not earlier ones have finished. Latency runs
from the moment a request is handed to the client to the moment its whole body is read. The
default client is a lean asyncio HTTP/1.1 client (about 1 ms of CPU per 1 MB answer); --client
httpx uses httpx.AsyncClient (about 4-5 ms per answer on 2 cores, so it cannot offer 500 req/s
here).
Bounds: each request times out after --timeout s; at most --max-in-flight requests are open (a
request due while that many are open is shed: counted, never sent); a cell ends at the latest
--timeout s after its last send; between cells the gateway is left to go idle.
Reports per rate and target: requests/s achieved (answers / time from the first scheduled send
to the last answer) against offered, p50/p90/p99 latency, added latency (target minus direct,
p50 and p99), errors and shed requests, how late the generator sent against its schedule
(large: the generator or the machine, not the target, is the bottleneck), CPU seconds of the
gateway, the upstream and the generator, and the CPU other processes used meanwhile.
Prints one JSON object, then a table. Exit status 1 if a target failed its correctness check.
"""

MODEL = "black-forest-labs/flux.2-klein-4b"
UPSTREAM_KEY = "bench-upstream-key"
IMAGE_SIZE = 1024
REQUEST_BODY = {
    "model": MODEL,
    "prompt": "x",
    "size": "1024x1024",
    "response_format": "b64_json",
}
TARGETS = ("direct", "relay", "relay-buffered", "pixelrouter", "portkey")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def upstream_body(png: bytes) -> bytes:
    b64 = base64.b64encode(png).decode("ascii")
    return json.dumps({"created": 1795564800, "data": [{"b64_json": b64}]}).encode()


# ------------------------------------------------------------------ role: the fast upstream


def run_upstream(port: int, png_path: str) -> None:
    """HTTP/1.1 keep-alive server: POST /v1/images/generations gets the fixed answer, built once;
    anything else a small 404. No framework, so the upstream costs as little CPU as possible."""
    body = upstream_body(Path(png_path).read_bytes())
    ok = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    missing_body = b'{"error":{"message":"not found"}}'
    missing = (
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(missing_body)).encode() + b"\r\n\r\n" + missing_body
    )

    class Upstream(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.buffer = bytearray()

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).decode("latin-1")
                lines = head.split("\r\n")
                length = 0
                close = False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value.strip())
                    elif name == "connection" and value.strip().lower() == "close":
                        close = True
                if len(self.buffer) < end + 4 + length:
                    return
                del self.buffer[: end + 4 + length]
                method, _, rest = lines[0].partition(" ")
                path = rest.split(" ", 1)[0].split("?", 1)[0]
                hit = method == "POST" and path == "/v1/images/generations"
                self.transport.write(ok if hit else missing)
                if close:
                    self.transport.close()
                    return

    _run(_serve(Upstream, port))


async def _serve(protocol: Callable[[], asyncio.Protocol], port: int) -> None:
    """Serve `protocol` on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# ------------------------------------------------------------------ role: a bare relay


def run_relay(port: int, upstream_port: int, buffered: bool) -> None:
    """The floor of any gateway written in Python on this machine: one extra hop that does
    nothing but pass bytes. Each client connection gets its own upstream connection, and
    whatever arrives on one is written to the other: no HTTP library, no JSON, no checks.
    Unbuffered, bytes go on as they come. Buffered, an answer goes on only once it is whole (its
    Content-Length read), as in a gateway that checks what it delivers before answering. What a
    gateway adds beyond these rows is its own work."""

    class Pipe(asyncio.Protocol):
        def __init__(self, peer: Pipe | None = None) -> None:
            self.peer = peer
            self.is_upstream = peer is not None
            self.transport: asyncio.Transport | None = None
            self.pending: list[bytes] = []  # what arrived before the other side connected
            self.answer: list[bytes] = []  # buffered: the answer so far
            self.answer_size = 0
            self.answer_need = -1  # its whole size, head included; -1: head not yet seen

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]
            if self.peer is None:  # a client: open its upstream connection
                loop = asyncio.get_running_loop()
                connecting = loop.create_connection(lambda: Pipe(self), "127.0.0.1", upstream_port)
                loop.create_task(connecting).add_done_callback(self._connected)
            else:  # the upstream side: the client's bytes so far go out now
                self.peer.peer = self
                for data in self.peer.pending:
                    transport.write(data)  # type: ignore[attr-defined]
                self.peer.pending.clear()

        def _connected(self, task: asyncio.Task[Any]) -> None:
            if task.exception() is not None and self.transport is not None:
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            peer = self.peer
            if peer is None or peer.transport is None:
                self.pending.append(data)
            elif buffered and self.is_upstream:
                self._buffer(data, peer.transport)
            else:
                peer.transport.write(data)

        def _buffer(self, data: bytes, client: asyncio.Transport) -> None:
            self.answer.append(data)
            self.answer_size += len(data)
            while True:
                if self.answer_need < 0:
                    joined = b"".join(self.answer)
                    self.answer = [joined]
                    end = joined.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    length = 0
                    for line in joined[:end].split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value.strip())
                    self.answer_need = end + 4 + length
                if self.answer_size < self.answer_need:
                    return
                whole = b"".join(self.answer)
                if len(whole) == self.answer_need:  # the usual case: no copy
                    client.write(whole)
                    self.answer, self.answer_size, self.answer_need = [], 0, -1
                    return
                client.write(whole[: self.answer_need])
                rest = whole[self.answer_need :]
                self.answer, self.answer_size, self.answer_need = [rest], len(rest), -1
                if not rest:
                    return

        def connection_lost(self, exc: Exception | None) -> None:
            if self.peer is not None and self.peer.transport is not None:
                self.peer.transport.close()

    _run(_serve(Pipe, port))


# ------------------------------------------------------------------ role: a load generator


class _RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of the lean client: sends a pre-built request and
    counts the answer's body bytes (Content-Length or chunked) without keeping them."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.alive = True
        self.waiter: asyncio.Future[tuple[int, int]] | None = None
        self._head = bytearray()
        self._line = bytearray()
        self._state = "idle"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    def request(self, data: bytes) -> asyncio.Future[tuple[int, int]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self._state, self._head, self._received = "head", bytearray(), 0
        self.transport.write(data)
        return self.waiter

    def _finish(self) -> None:
        self._state = "idle"
        if self._close and self.transport is not None:
            self.alive = False
            self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self._status, self._received))

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while len(view):
            state = self._state
            if state == "head":
                self._head += view
                end = self._head.find(b"\r\n\r\n")
                if end < 0:
                    return
                rest = bytes(self._head[end + 4 :])
                lines = bytes(self._head[:end]).decode("latin-1").split("\r\n")
                self._status = int(lines[0].split(" ", 2)[1])
                self._close, self._remaining, chunked = False, 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name, value = name.strip().lower(), value.strip().lower()
                    if name == "content-length":
                        self._remaining = int(value)
                    elif name == "transfer-encoding" and "chunked" in value:
                        chunked = True
                    elif name == "connection" and value == "close":
                        self._close = True
                self._state = "size" if chunked else "body"
                self._line = bytearray()
                view = memoryview(rest)
                if self._state == "body" and self._remaining == 0:
                    self._finish()
            elif state in ("body", "chunk"):
                before = self._remaining
                take = min(len(view), before)
                self._remaining -= take
                view = view[take:]
                if state == "body":
                    self._received += take
                    if self._remaining == 0:
                        self._finish()
                else:  # count the chunk's data, not its closing CRLF
                    crlf = max(0, 2 - self._remaining) - max(0, 2 - before)
                    self._received += take - crlf
                    if self._remaining == 0:
                        self._state = "size"
            elif state in ("size", "trailer"):
                self._line += view
                view = memoryview(b"")
                while self._state in ("size", "trailer"):
                    end = self._line.find(b"\r\n")
                    if end < 0:
                        break
                    line = bytes(self._line[:end])
                    del self._line[: end + 2]
                    if self._state == "trailer":
                        if not line:
                            self._finish()
                            return
                        continue
                    size = int(line.split(b";", 1)[0].strip(), 16)
                    if size == 0:
                        self._state = "trailer"
                    else:
                        self._state, self._remaining = "chunk", size + 2  # data and its CRLF
                        view = memoryview(bytes(self._line))
                        self._line = bytearray()
            else:  # bytes with no request waiting: ignore them
                return


class _RawClient:
    """A connection pool of `_RawConnection`s to one host: the lean client, so the load
    generator costs well under a millisecond of CPU per 1 MB answer."""

    def __init__(self, url: str, headers: dict[str, str], body: bytes) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        head = [f"POST {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"content-length: {len(body)}", "", ""]
        self.data = "\r\n".join(head).encode("latin-1") + body
        self.idle: list[_RawConnection] = []

    async def post(self) -> tuple[int, int]:
        while self.idle:
            conn = self.idle.pop()
            if conn.alive:
                break
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_RawConnection, self.host, self.port)
        try:
            status, size = await conn.request(self.data)
        except BaseException:
            conn.alive = False
            if conn.transport is not None:
                conn.transport.close()
            raise
        if conn.alive:
            self.idle.append(conn)
        return status, size

    async def aclose(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


def run_loadgen(spec: dict[str, Any]) -> None:
    """One open-loop worker: request k is due at start_at + offset + k / rate, sent then whether
    or not earlier ones have finished (up to max_in_flight open). Prints its results as JSON."""
    rate: float = spec["rate"]
    count: int = spec["count"]
    cap: int = spec["max_in_flight"]
    timeout_s: float = spec["timeout_s"]
    body = json.dumps(spec["body"]).encode()
    headers = {"content-type": "application/json", **spec["headers"]}
    url: str = spec["url"]
    min_bytes: int = spec["min_bytes"]

    async def main() -> dict[str, Any]:
        if spec["client"] == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
            client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s))

            async def post() -> tuple[int, int]:
                response = await client.post(url, content=body, headers=headers)
                return response.status_code, len(response.content)

            close = client.aclose
        else:
            raw = _RawClient(url, headers, body)
            post, close = raw.post, raw.aclose
        rows: list[list[float]] = []
        errors: dict[str, int] = {}
        shed = 0
        in_flight = 0
        tasks: set[asyncio.Task[None]] = set()

        async def one(due: float) -> None:
            nonlocal in_flight
            sent = time.time()
            try:
                status, size = await asyncio.wait_for(post(), timeout_s)
                done = time.time()
                if status != 200:
                    errors[f"http_{status}"] = errors.get(f"http_{status}", 0) + 1
                elif size < min_bytes:
                    errors["short_body"] = errors.get("short_body", 0) + 1
                else:
                    rows.append([due, sent - due, done - sent, done])
            except Exception as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                errors[kind] = errors.get(kind, 0) + 1
            finally:
                in_flight -= 1

        try:
            # Warm-up, not recorded: open a few connections, let the target fill its own pool.
            for _ in range(2):
                await asyncio.gather(*(post() for _ in range(4)), return_exceptions=True)
            start_at = spec["start_at"] + spec["offset"]
            late_start_s = max(0.0, time.time() - start_at)
            cpu0 = time.process_time()
            await asyncio.sleep(max(0.0, start_at - time.time()))
            k = 0
            while k < count:
                now = time.time()
                while k < count and start_at + k / rate <= now:
                    due = start_at + k / rate
                    k += 1
                    if in_flight >= cap:
                        shed += 1
                        continue
                    in_flight += 1
                    task = asyncio.create_task(one(due))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if k < count:
                    await asyncio.sleep(max(0.0, start_at + k / rate - time.time()))
            if tasks:
                await asyncio.wait(set(tasks), timeout=timeout_s + 1)
            unfinished = len(tasks)
            for task in list(tasks):
                task.cancel()
            cpu_s = time.process_time() - cpu0
        finally:
            await close()
        return {
            "rows": rows,
            "errors": errors,
            "shed": shed,
            "unfinished": unfinished,
            "first_due": start_at,
            "late_start_s": late_start_s,
            "cpu_s": cpu_s,
        }

    print(json.dumps(_run(main())))


# ------------------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}); see {log}:\n{log_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within 60 s; see {log}:\n{log_tail(log)}")


def log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    pid: int | None  # the gateway process whose CPU is measured; None for direct
    available: bool = True
    note: str = ""


@dataclass
class Stack:
    tmp: Path
    upstream_port: int
    upstream_pid: int
    png: bytes
    targets: dict[str, Target] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def stack(args: argparse.Namespace) -> Iterator[Stack]:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="pixelrouter-gwbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def spawn(cmd: list[str], name: str, **kw: Any) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp / f"{name}.log"
        handle = log.open("wb")
        logs.append(handle)
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, **kw)
        procs.append(proc)
        return proc, log

    try:
        png = make_png()
        png_path = tmp / "image.png"
        png_path.write_bytes(png)
        up_port = free_port()
        up, up_log = spawn(
            [
                sys.executable,
                __file__,
                "--role",
                "upstream",
                "--port",
                str(up_port),
                "--png",
                str(png_path),
            ],
            "upstream",
        )
        wait_for_port(up_port, up, "the upstream", up_log)
        st = Stack(tmp, up_port, up.pid, png, procs=procs)
        upstream_v1 = f"http://127.0.0.1:{up_port}/v1"
        st.targets["direct"] = Target(
            "direct",
            f"{upstream_v1}/images/generations",
            {"authorization": f"Bearer {UPSTREAM_KEY}"},
            None,
        )

        for relay_name in ("relay", "relay-buffered"):
            if relay_name not in args.targets:
                continue
            relay_port = free_port()
            relay, relay_log = spawn(
                [
                    sys.executable,
                    __file__,
                    "--role",
                    relay_name,
                    "--port",
                    str(relay_port),
                    "--upstream-port",
                    str(up_port),
                ],
                relay_name,
            )
            wait_for_port(relay_port, relay, f"the {relay_name}", relay_log)
            st.targets[relay_name] = Target(
                relay_name,
                f"http://127.0.0.1:{relay_port}/v1/images/generations",
                {"authorization": f"Bearer {UPSTREAM_KEY}"},
                relay.pid,
            )

        if "pixelrouter" in args.targets:
            gw_port = free_port()
            config = tmp / "gw.toml"
            config.write_text(
                f"""[server]
db = "sqlite:///{(tmp / "pixelrouter.db").as_posix()}"

[[providers]]
name = "fast-upstream"
display_name = "Fast upstream"
type = "openai-images"
url = "{upstream_v1}"
api_key = "env:UPSTREAM_KEY"
models = ["{MODEL}"]
timeouts = {{ connect_s = 5, first_byte_s = 60, total_s = 120 }}
"""
            )
            admin = "sk-pr-v1-" + os.urandom(32).hex()
            env = {
                **os.environ,
                "UPSTREAM_KEY": UPSTREAM_KEY,
                "PIXELROUTER_ADMIN_KEY": admin,
                "PIXELROUTER_DATA_DIR": str(tmp / "data"),
            }
            exe = Path(sys.executable).parent / "pixelrouter"
            cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pixelrouter.cli"]
            gw, gw_log = spawn(
                [
                    *cmd,
                    "serve",
                    "--no-engine",
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(gw_port),
                    "--log-level",
                    "warning",
                ],
                "pixelrouter",
                env=env,
            )
            wait_for_port(gw_port, gw, "pixelrouter", gw_log)
            base = f"http://127.0.0.1:{gw_port}/api/v1"
            deadline = time.monotonic() + 30
            while True:
                ready = httpx.get(f"http://127.0.0.1:{gw_port}/ready", timeout=10)
                if ready.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            made = httpx.post(
                f"{base}/keys",
                json={"name": "gateway-bench"},
                headers={"authorization": f"Bearer {admin}"},
                timeout=30,
            )
            made.raise_for_status()
            st.targets["pixelrouter"] = Target(
                "pixelrouter",
                f"{base}/images/generations",
                {"authorization": f"Bearer {made.json()['key']}"},
                gw.pid,
            )

        if "portkey" in args.targets:
            node = shutil.which("node")
            if node is None:
                st.targets["portkey"] = Target("portkey", "", {}, None, False, "node not found")
            elif not PORTKEY_ENTRY.exists():
                st.targets["portkey"] = Target(
                    "portkey",
                    "",
                    {},
                    None,
                    False,
                    f"{PORTKEY_ENTRY.relative_to(ROOT)} missing: run `npm ci` in bench/portkey",
                )
            else:
                pk_port = free_port()
                pk, pk_log = spawn(
                    [
                        node,
                        "--import",
                        "./loopback.mjs",
                        str(PORTKEY_ENTRY),
                        f"--port={pk_port}",
                        "--headless",
                    ],
                    "portkey",
                    cwd=PORTKEY_DIR,
                    env={**os.environ, "NODE_ENV": "production"},
                )
                wait_for_port(pk_port, pk, "the Portkey gateway", pk_log)
                st.targets["portkey"] = Target(
                    "portkey",
                    f"http://127.0.0.1:{pk_port}/v1/images/generations",
                    {
                        "authorization": f"Bearer {UPSTREAM_KEY}",
                        "x-portkey-provider": "openai",
                        "x-portkey-custom-host": upstream_v1,
                    },
                    pk.pid,
                )
        yield st
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for handle in logs:
            handle.close()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def check_target(target: Target, png: bytes) -> str | None:
    """One request: the answer must carry exactly the upstream's PNG. None when it does."""
    import httpx

    try:
        response = httpx.post(target.url, json=REQUEST_BODY, headers=target.headers, timeout=30)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    try:
        data = response.json()["data"][0]["b64_json"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"no data[0].b64_json in {response.text[:300]}"
    if base64.b64decode(data) != png:
        return "the image differs from the upstream's"
    return None


def run_cell(
    target: Target,
    rate: float,
    seconds: float,
    args: argparse.Namespace,
    min_bytes: int,
    upstream_pid: int,
) -> dict[str, Any]:
    workers = max(1, min(args.workers, int(rate)))
    count = max(1, round(rate * seconds))
    start_at = time.time() + args.startup_s
    procs = []
    for w in range(workers):
        n = count // workers + (1 if w < count % workers else 0)
        spec = {
            "url": target.url,
            "headers": target.headers,
            "body": REQUEST_BODY,
            "rate": rate / workers,
            "count": n,
            "start_at": start_at,
            "offset": w / rate,
            "max_in_flight": max(1, args.max_in_flight // workers),
            "timeout_s": args.timeout,
            "min_bytes": min_bytes,
            "client": args.client,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--role", "loadgen", "--spec", json.dumps(spec)],
                stdout=subprocess.PIPE,
            )
        )
    # CPU counters from just before the first send to after the last answer.
    time.sleep(max(0.0, start_at - time.time() - 0.05))
    pids = {"gateway": target.pid, "upstream": upstream_pid}
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
    busy0, wall0 = machine_busy(), time.monotonic()
    outs = [p.communicate()[0] for p in procs]
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items() if p}
    busy1, wall1 = machine_busy(), time.monotonic()
    results = [json.loads(out) for out in outs]

    settle(target.pid)
    rows = [r for res in results for r in res["rows"]]
    errors: dict[str, int] = {}
    for res in results:
        for kind, n in res["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    shed = sum(r["shed"] for r in results)
    unfinished = sum(r["unfinished"] for r in results)
    ok = len(rows)
    first_due = min(r["first_due"] for r in results)
    last_done = max((row[3] for row in rows), default=first_due)
    span = max(last_done - first_due, 1e-9)
    latencies = sorted(row[2] * 1000 for row in rows)
    lags = sorted(row[1] * 1000 for row in rows)
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    cpu["loadgen"] = sum(r["cpu_s"] for r in results)
    return {
        "target": target.name,
        "offered_rps": rate,
        "seconds": seconds,
        "workers": workers,
        "scheduled": count,
        "ok": ok,
        "errors": errors,
        "shed": shed,
        "unfinished": unfinished,
        # completed answers per second, from the first due time to the last answer
        "achieved_rps": ok / span,
        "p50_ms": _pct(latencies, 50),
        "p90_ms": _pct(latencies, 90),
        "p99_ms": _pct(latencies, 99),
        "mean_ms": statistics.fmean(latencies) if latencies else None,
        "max_ms": latencies[-1] if latencies else None,
        # how late the generator sent, against the schedule: large values mean the load
        # generator (or the machine it shares) could not keep up
        "send_lag_p50_ms": _pct(lags, 50),
        "send_lag_p99_ms": _pct(lags, 99),
        "late_start_s": max(r["late_start_s"] for r in results),
        "cpu_s": cpu,
        "gateway_cpu_ms_per_request": (cpu["gateway"] * 1000 / ok)
        if ok and "gateway" in cpu
        else None,
        "upstream_cpu_ms_per_request": cpu["upstream"] * 1000 / ok if ok else None,
        "loadgen_cpu_ms_per_request": cpu["loadgen"] * 1000 / ok if ok else None,
        "machine_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
        # cores busy with work that is not this benchmark's (other tenants, other jobs)
        "other_cores": max(0.0, (busy1[0] - busy0[0]) / CLK_TCK - sum(cpu.values()))
        / max(1e-9, wall1 - wall0),
    }


def settle(pid: int | None, limit_s: float = 30.0) -> None:
    """Wait until a gateway is idle (under 5 % of a core for 0.5 s): after an overloaded cell
    it may still be closing requests whose clients gave up."""
    if pid is None:
        return
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(report: dict[str, Any]) -> str:
    lines = [
        "| offered req/s | target | achieved req/s | ok / sent | errors | p50 ms | p99 ms | "
        "added p50 ms | added p99 ms | send lag p99 ms | gateway CPU ms/req | machine busy | "
        "other load, cores |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in report["cells"]:
        errors = ", ".join(f"{k} {v}" for k, v in cell["errors"].items()) or "0"
        if cell["shed"]:
            errors += f"; shed {cell['shed']}"
        sent = cell["scheduled"] - cell["shed"]
        lines.append(
            f"| {cell['offered_rps']:g} | {cell['target']} | {_fmt(cell['achieved_rps'])} | "
            f"{cell['ok']} / {sent} | {errors} | {_fmt(cell['p50_ms'])} | "
            f"{_fmt(cell['p99_ms'])} | {_fmt(cell.get('added_p50_ms'))} | "
            f"{_fmt(cell.get('added_p99_ms'))} | {_fmt(cell['send_lag_p99_ms'])} | "
            f"{_fmt(cell['gateway_cpu_ms_per_request'])} | {cell['machine_busy']:.0%} | "
            f"{cell['other_cores']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", default="5,50,200,500", help="offered requests/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each cell")
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="subset of " + ",".join(TARGETS)
    )
    parser.add_argument("--no-portkey", action="store_true", help="leave out the Portkey gateway")
    parser.add_argument("--workers", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: a lean asyncio HTTP/1.1 client (default); httpx: httpx.AsyncClient, which "
        "costs about 4-5 ms of CPU per 1 MB answer here",
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=256, help="open requests, all workers together"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="per-request timeout, s")
    parser.add_argument("--pause", type=float, default=2.0, help="idle seconds between cells")
    parser.add_argument("--startup-s", type=float, default=1.5, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2 s cells, a smoke run")
    parser.add_argument("--json", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (logs)")
    parser.add_argument(
        "--role", choices=("upstream", "relay", "relay-buffered", "loadgen"), help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--png", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "upstream":
        run_upstream(args.port, args.png)
        return 0
    if args.role in ("relay", "relay-buffered"):
        run_relay(args.port, args.upstream_port, buffered=args.role == "relay-buffered")
        return 0
    if args.role == "loadgen":
        run_loadgen(json.loads(args.spec))
        return 0

    if args.quick:
        args.seconds = 2.0
        args.pause = 1.0
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.no_portkey and "portkey" in args.targets:
        args.targets.remove("portkey")
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}")
    if "direct" not in args.targets:
        args.targets.insert(0, "direct")  # the baseline every added latency is measured from

    started = time.time()
    failed = False
    with stack(args) as st:
        body_len = len(upstream_body(st.png))
        report: dict[str, Any] = {
            "benchmark": "gateway overhead",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "node": _node_version(),
                "load_average_at_start": os.getloadavg(),
            },
            "source": git_state(),
            "image": {
                "png_bytes": len(st.png),
                "upstream_body_bytes": body_len,
                "width": IMAGE_SIZE,
                "height": IMAGE_SIZE,
            },
            "settings": {
                "rates": rates,
                "seconds": args.seconds,
                "workers": args.workers,
                "client": args.client,
                "max_in_flight": args.max_in_flight,
                "timeout_s": args.timeout,
            },
            "targets": {},
            "cells": [],
        }
        runnable: list[Target] = []
        for name in args.targets:
            target = st.targets[name]
            entry: dict[str, Any] = {"url": target.url, "available": target.available}
            if target.available:
                problem = check_target(target, st.png)
                entry["check"] = problem or "ok: the upstream's PNG, byte for byte"
                if problem:
                    failed = True
                    entry["available"] = False
                else:
                    runnable.append(target)
            else:
                entry["check"] = target.note
            report["targets"][name] = entry
            print(f"{name}: {entry['check']}", file=sys.stderr)
        version = _portkey_version()
        if version and "portkey" in report["targets"]:
            report["targets"]["portkey"]["version"] = version

        min_bytes = body_len  # every gateway re-sends at least the base64 of the image
        for rate in rates:
            direct: dict[str, Any] | None = None
            for target in runnable:
                cell = run_cell(
                    target, rate, args.seconds, args, min_bytes * 9 // 10, st.upstream_pid
                )
                if target.name == "direct":
                    direct = cell
                elif direct and direct["p50_ms"] is not None and cell["p50_ms"] is not None:
                    cell["added_p50_ms"] = cell["p50_ms"] - direct["p50_ms"]
                    cell["added_p99_ms"] = cell["p99_ms"] - direct["p99_ms"]
                report["cells"].append(cell)
                print(
                    f"{rate:g} req/s {target.name}: {cell['ok']} ok, "
                    f"{_fmt(cell['achieved_rps'])} req/s, p50 {_fmt(cell['p50_ms'])} ms, "
                    f"p99 {_fmt(cell['p99_ms'])} ms, errors {cell['errors']}, shed {cell['shed']}",
                    file=sys.stderr,
                )
                time.sleep(args.pause)
        report["wall_s"] = time.time() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print()
    print(table(report))
    return 1 if failed else 0


def git_state() -> dict[str, Any]:
    """The commit measured and whether src/ had uncommitted changes (read-only git calls)."""

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    status = git("status", "--porcelain", "--", "src") if commit else None
    return {"commit": commit, "src_dirty": None if status is None else bool(status)}


def _node_version() -> str | None:
    node = shutil.which("node")
    if node is None:
        return None
    try:
        return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


def _portkey_version() -> str | None:
    try:
        return json.loads((PORTKEY_ENTRY.parents[1] / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


if __name__ == "__main__":
    sys.exit(main())
