"""Soak: a `pixelrouter serve --demo` process under steady mixed traffic, then the books checked.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/soak.py [--seconds 600] [--rate 2] [--json FILE]
     [--max-rss-growth-mb 150] [--rss-every 30]

Starts the server on a free loopback port (SQLite in a temporary folder, demo weights), makes an
inference key with a limit, and sends requests at `--rate` per second (open loop) for
`--seconds`, picked at random with a fixed seed from this mix:

  35 %  POST /images, 64x64 or 128x128 PNG (n 1 or 2)      20 %  POST /images, streamed
  15 %  POST /chat/completions (image output)               10 %  POST /images/edits (multipart)
  10 %  errors the client causes: a bad size, an unknown model, a bad key, an odd static
        path (400, 404, 401, 404)
   5 %  cancellations: a request whose client leaves after 50-300 ms
   5 %  a streamed 1024x1024 image (an event larger than the sockets buffer) whose client
        reads 4 KB of it and leaves

Then it waits for the traffic to end and reports: requests by kind and by outcome class,
latency p50/p99 of the successes, the server's resident memory after warm-up, every
`--rss-every` seconds and at the end (and how much of the growth came in the run's second half:
memory that levels off grows there little or not at all),
the reservations still open (must be 0), and the ledger: the key's settled total must equal the
sum of `usage.cost` of the delivered answers, every successful generation's record must be
final, and a client that left mid-answer must not be charged. Every `/metrics` label value
must come from the app's routes. Exit status 1 if any check fails (a 5xx, a lost request,
money that does not add up, memory growth over the bound). `tests/hardening/test_soak.py`
runs it for 60 s in `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "black-forest-labs/flux.2-klein-4b"
KEY_LIMIT_USD = 1000.0
LEAVING_RCVBUF = 64 * 1024  # the leaving client's receive buffer (the kernel doubles it)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reference_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 80), (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Outcome:
    kind: str
    status: int  # HTTP status; 0 for a transport error; -1 for a cancellation we caused
    seconds: float
    cost_micro: int = 0
    generation_id: str | None = None
    error: str | None = None


@dataclass
class Soak:
    api: str
    key: str
    rng: random.Random
    reference: bytes
    outcomes: list[Outcome] = field(default_factory=list)

    def _auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def one(self, client: httpx.AsyncClient, n: int, roll: float | None = None) -> None:
        roll = self.rng.random() if roll is None else roll
        size = self.rng.choice(("64x64", "128x128"))
        started = time.perf_counter()
        kind = "?"
        try:
            if roll < 0.35:
                kind = "images"
                body = {"model": MODEL, "prompt": f"soak {n}", "size": size,
                        "n": self.rng.choice((1, 2))}  # fmt: skip
                r = await client.post(f"{self.api}/images", json=body, headers=self._auth())
                self._record(kind, r, started, r.json().get("usage") if r.is_success else None)
            elif roll < 0.55:
                kind = "images-stream"
                body = {"model": MODEL, "prompt": f"soak {n}", "size": size, "stream": True}
                await self._stream(client, kind, body, started)
            elif roll < 0.70:
                kind = "chat"
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"soak {n}"}],
                    "modalities": ["image"],
                    "image_config": {"image_size": "0.5K", "aspect_ratio": "1:1"},
                }
                r = await client.post(
                    f"{self.api}/chat/completions", json=body, headers=self._auth()
                )
                self._record(kind, r, started, r.json().get("usage") if r.is_success else None)
            elif roll < 0.80:
                kind = "edits"
                r = await client.post(
                    f"{self.api}/images/edits",
                    data={"model": MODEL, "prompt": f"soak edit {n}", "size": "64x64"},
                    files={"image": ("ref.png", self.reference, "image/png")},
                    headers=self._auth(),
                )
                self._record(kind, r, started, r.json().get("usage") if r.is_success else None)
            elif roll < 0.90:
                kind = "client-error"
                choice = n % 4
                if choice == 0:
                    r = await client.post(
                        f"{self.api}/images",
                        json={"prompt": "x", "size": "100x100"},
                        headers=self._auth(),
                    )
                elif choice == 1:
                    r = await client.post(
                        f"{self.api}/images",
                        json={"prompt": "x", "model": "nobody/nothing"},
                        headers=self._auth(),
                    )
                elif choice == 2:
                    r = await client.post(
                        f"{self.api}/images",
                        json={"prompt": "x"},
                        headers=self._auth("sk-pr-v1-" + "0" * 64),
                    )
                else:  # a new static path each time: must not be a new metrics series
                    r = await client.get(f"{self.api.removesuffix('/api/v1')}/static/soak-{n}.js")
                self._record(kind, r, started, None)
            elif roll < 0.95:
                kind = "left-mid-answer"
                body = {"model": MODEL, "prompt": f"soak leave {n}", "size": "1024x1024",
                        "stream": True}  # fmt: skip
                await self._leave_mid_answer(body, started)
            else:
                kind = "cancelled"
                body = {"model": MODEL, "prompt": f"soak cancel {n}", "size": "128x128"}
                request = client.post(f"{self.api}/images", json=body, headers=self._auth())
                try:
                    r = await asyncio.wait_for(request, self.rng.uniform(0.05, 0.3))
                    self._record(kind, r, started, r.json().get("usage") if r.is_success else None)
                except TimeoutError:
                    self.outcomes.append(Outcome(kind, -1, time.perf_counter() - started))
        except httpx.HTTPError as exc:
            self.outcomes.append(
                Outcome(kind, 0, time.perf_counter() - started, error=type(exc).__name__)
            )

    def _record(
        self, kind: str, r: httpx.Response, started: float, usage: dict[str, Any] | None
    ) -> None:
        cost = round(float(usage["cost"]) * 1_000_000) if usage else 0
        self.outcomes.append(
            Outcome(
                kind,
                r.status_code,
                time.perf_counter() - started,
                cost,
                r.headers.get("x-generation-id"),
                None if r.is_success else r.text[:200],
            )
        )

    async def _leave_mid_answer(self, body: dict[str, Any], started: float) -> None:
        """Read 4 KB into the image's event, then leave: nothing may be charged for it.

        On its own connection with a fixed 64 KiB receive buffer: left to autotuning (up to
        `tcp_rmem`'s 32 MiB here), a client descheduled between two reads lets its kernel take
        and acknowledge the whole 3 MB event before it leaves, and an image the client's TCP
        acknowledged whole was handed over (docs/billing.md): the client would not have left
        mid-answer at all, as far as anyone on the wire can tell."""
        small_buffer = httpx.AsyncHTTPTransport(
            socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, LEAVING_RCVBUF)]
        )
        async with (
            httpx.AsyncClient(
                transport=small_buffer, timeout=httpx.Timeout(300, connect=10)
            ) as own,
            own.stream("POST", f"{self.api}/images", json=body, headers=self._auth()) as r,
        ):
            generation_id = r.headers.get("x-generation-id")
            seen = b""
            async for chunk in r.aiter_raw():
                seen += chunk
                marker = seen.find(b"image_generation.completed")
                if marker >= 0 and len(seen) > marker + 4096:
                    break  # closing the response now drops the connection, data unread
        self.outcomes.append(
            Outcome("left-mid-answer", -2, time.perf_counter() - started, 0, generation_id)
        )

    async def _stream(
        self, client: httpx.AsyncClient, kind: str, body: dict[str, Any], started: float
    ) -> None:
        usage = None
        status = 0
        generation_id = None
        error = None
        async with client.stream(
            "POST", f"{self.api}/images", json=body, headers=self._auth()
        ) as r:
            status, generation_id = r.status_code, r.headers.get("x-generation-id")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[len("data: ") :])
                if event.get("type") == "image_generation.completed":
                    usage = event.get("usage")
                elif event.get("type") == "error" or "error" in event:
                    error = str(event)[:200]
        if error is not None:
            status = 502  # an error event mid-stream counts as a failure of the request
        cost = round(float(usage["cost"]) * 1_000_000) if usage and error is None else 0
        self.outcomes.append(
            Outcome(kind, status, time.perf_counter() - started, cost, generation_id, error)
        )


def _start_server(tmp: Path, admin_key: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    log = tmp / "server.log"
    exe = Path(sys.executable).parent / "pixelrouter"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pixelrouter.cli"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PIXELROUTER_ADMIN_KEY": admin_key,
        "PIXELROUTER_DATA_DIR": str(tmp / "data"),
    }
    process = subprocess.Popen(
        [
            *cmd,
            "serve",
            "--demo",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            f"sqlite:///{tmp / 'soak.db'}",
            "--log-level",
            "warning",
        ],  # fmt: skip
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return process, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready in 180 s")


KIND_ROLLS = (0.1, 0.4, 0.6, 0.75, 0.85, 0.92, 0.97)  # one roll inside each kind's share


async def _every_kind_once(soak: Soak) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10)) as client:
        for n, roll in enumerate(KIND_ROLLS):
            await soak.one(client, -1 - n, roll)


async def _drive(soak: Soak, seconds: float, rate: float) -> float:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10), limits=limits) as client:
        started = time.monotonic()
        tasks = []
        n = 0
        while (due := started + n / rate) < started + seconds:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(soak.one(client, n)))
            n += 1
        await asyncio.gather(*tasks)
        return time.monotonic() - started


def _stray_metric_labels(text: str) -> list[str]:
    """`endpoint` label values that are no route template (a raw path became a series)."""
    from prometheus_client.parser import text_string_to_metric_families

    labels = {
        sample.labels["endpoint"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "endpoint" in sample.labels
    }
    return sorted(label for label in labels if "soak-" in label or label.count("/") > 8)


def _books(db_url: str, key_hash: str, soak: Soak) -> dict[str, Any]:
    """What the database says, against what the clients were told."""
    from pixelrouter.store import Store

    answered = [o for o in soak.outcomes if o.status == 200 and o.cost_micro > 0]
    with Store(db_url) as store:
        records = {g.id: g for g in store.list_generations(key_hash, limit=100_000)}
        succeeded = [g for g in records.values() if g.state == "succeeded"]
        answered_ids = {o.generation_id for o in answered}
        return {
            "open_reservations": len(store.open_reservations(key_hash)),
            "reserved_micro": store.key_balance(key_hash).reserved,
            "ledger_total_micro": store.ledger_total(key_hash),
            # Delivered, as the server saw it: the succeeded generations' prices.
            "delivered_total_micro": sum(g.total_cost_micro for g in succeeded),
            "answered_total_micro": sum(o.cost_micro for o in answered),
            "records": len(records),
            # Made, charged, and not read: the client had left once the images existed.
            "delivered_to_clients_that_left": len(
                [g for g in succeeded if g.id not in answered_ids]
            ),
            "unfinished_records": [g.id for g in records.values() if not g.finished][:10],
            "answered_without_record": [i for i in answered_ids if i not in records][:10],
            "left_mid_answer_charged": [
                o.generation_id
                for o in soak.outcomes
                if o.status == -2
                and o.generation_id in records
                and records[o.generation_id].total_cost_micro
            ][:10],
            "answered_cost_differs_from_record": [
                o.generation_id
                for o in answered
                if o.generation_id in records
                and records[o.generation_id].total_cost_micro != o.cost_micro
            ][:10],
        }


class _RssSampler(threading.Thread):
    """The server's resident memory every `every` seconds while the traffic runs."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()

    def sample(self) -> None:
        elapsed = time.monotonic() - self.started_at
        self.samples.append((round(elapsed, 1), round(_rss_mb(self.pid), 1)))

    def at(self, fraction: float) -> float:
        """The sample nearest to `fraction` of the run's length."""
        target = fraction * self.samples[-1][0]
        return min(self.samples, key=lambda s: abs(s[0] - target))[1]


def run(
    seconds: float, rate: float, seed: int, max_growth_mb: float, rss_every: float = 30.0
) -> dict[str, Any]:
    from pixelrouter.keys import generate_key

    admin_key = generate_key()
    with tempfile.TemporaryDirectory(prefix="pixelrouter-soak-") as tmp_name:
        tmp = Path(tmp_name)
        process, url, log = _start_server(tmp, admin_key)
        try:
            admin = {"Authorization": f"Bearer {admin_key}"}
            made = httpx.post(
                f"{url}/api/v1/keys",
                json={"name": "soak", "limit": KEY_LIMIT_USD},
                headers=admin,
                timeout=30,
            )
            made.raise_for_status()
            key, key_hash = made.json()["key"], made.json()["data"]["hash"]
            soak = Soak(f"{url}/api/v1", key, random.Random(seed), _reference_png())
            # Warm-up: every kind once (the 1024x1024 one included: its buffers are the
            # largest), then a few seconds of the mix, so the memory baseline includes what is
            # loaded or grown lazily.
            asyncio.run(_every_kind_once(soak))
            asyncio.run(_drive(soak, 5, 2))
            warm_up = len(soak.outcomes)  # in the books, not in the figures
            sampler = _RssSampler(process.pid, rss_every)
            sampler.sample()
            rss_start = sampler.samples[0][1]
            sampler.start()
            try:
                wall = asyncio.run(_drive(soak, seconds, rate))
            finally:
                sampler.stopped.set()
            sampler.sample()
            rss_end = sampler.samples[-1][1]
            # Read through the API first: it waits for bookkeeping written after answers.
            view = httpx.get(f"{url}/api/v1/key", headers={"Authorization": f"Bearer {key}"})
            view.raise_for_status()
            stray_labels = _stray_metric_labels(httpx.get(f"{url}/metrics", timeout=30).text)
            # Cancelled requests are closed by the server once it notices; give it a moment.
            deadline = time.monotonic() + 30
            while True:
                books = _books(f"sqlite:///{tmp / 'soak.db'}", key_hash, soak)
                if books["open_reservations"] == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        server_errors = [line for line in log.read_text().splitlines() if "Traceback" in line]

    outcomes = soak.outcomes[warm_up:]
    classes = Counter(
        "cancelled by client" if o.status == -1
        else "left mid-answer" if o.status == -2
        else "transport error" if o.status == 0
        else f"{o.status // 100}xx"
        for o in outcomes
    )  # fmt: skip
    ok = [o.seconds for o in outcomes if o.status == 200]
    client_errors = [o for o in outcomes if o.kind == "client-error"]
    report: dict[str, Any] = {
        "seconds": seconds,
        "rate": rate,
        "seed": seed,
        "wall_s": round(wall, 1),
        "requests": len(outcomes),
        "by_kind": dict(Counter(o.kind for o in outcomes)),
        "by_class": dict(classes),
        "statuses": dict(Counter(o.status for o in outcomes)),
        "latency_ok_p50_s": round(statistics.median(ok), 3) if ok else None,
        "latency_ok_p99_s": round(sorted(ok)[int(0.99 * (len(ok) - 1))], 3) if ok else None,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_growth_second_half_mb": round(rss_end - sampler.at(0.5), 1),
        "rss_samples_s_mb": sampler.samples,
        "max_rss_growth_mb": max_growth_mb,
        "usage_via_api_usd": view.json()["data"]["usage"],
        "tracebacks_in_server_log": len(server_errors),
        "stray_metric_labels": stray_labels,
        **books,
    }
    failures = []
    if classes.get("5xx") or classes.get("transport error"):
        bad = [(o.kind, o.status, o.error) for o in outcomes if o.status >= 500 or o.status == 0]
        failures.append(f"server errors or lost requests: {bad[:5]}")
    if any(o.status not in (400, 401, 404) for o in client_errors):
        failures.append("a client error was not answered 400/401/404")
    if books["open_reservations"] or books["reserved_micro"]:
        failures.append(f"reservations left open: {books['open_reservations']}")
    if books["ledger_total_micro"] != books["delivered_total_micro"]:
        failures.append("the ledger does not equal the sum of delivered images' prices")
    cancelled = sum(1 for o in soak.outcomes if o.status == -1)  # warm-up included
    if books["delivered_to_clients_that_left"] > cancelled:
        failures.append("images charged that no answer and no cancelled client account for")
    if books["unfinished_records"] or books["answered_without_record"]:
        failures.append("a generation record is missing or not final")
    if books["answered_cost_differs_from_record"]:
        failures.append("a record's cost differs from what its answer said")
    if books["left_mid_answer_charged"]:
        failures.append("a client that left mid-answer was charged")
    if report["stray_metric_labels"]:
        failures.append(f"/metrics labels that are no route: {report['stray_metric_labels']}")
    if report["rss_growth_mb"] > max_growth_mb:
        failures.append(f"memory grew {report['rss_growth_mb']} MB (bound {max_growth_mb} MB)")
    if server_errors:
        failures.append("tracebacks in the server log")
    report["failures"] = failures
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second, open loop")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--max-rss-growth-mb", type=float, default=150.0)
    parser.add_argument(
        "--rss-every", type=float, default=30.0, help="seconds between memory samples"
    )
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    report = run(args.seconds, args.rate, args.seed, args.max_rss_growth_mb, args.rss_every)
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    print(
        f"\n{report['requests']} requests in {report['wall_s']} s: {report['by_class']}; "
        f"ok p50 {report['latency_ok_p50_s']} s, p99 {report['latency_ok_p99_s']} s; "
        f"RSS {report['rss_start_mb']} -> {report['rss_end_mb']} MB "
        f"(second half {report['rss_growth_second_half_mb']:+} MB); "
        f"open reservations {report['open_reservations']}; ledger "
        f"{report['ledger_total_micro']} µ$ = delivered {report['delivered_total_micro']} µ$"
    )
    for failure in report["failures"]:
        print(f"FAILED: {failure}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
