"""Batch API on the demo engine: a batch's throughput against the same images sent as
concurrent interactive requests, and interactive latency with the engine idle and beside a
running batch (see --help).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/batches.py [--items 48] [--interactive 30]
     [--gap 0.25] [--big 0] [--json out.json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
from gateway import free_port, git_state, log_tail  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

USAGE = """\
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/batches.py [--items 48] [--interactive 30]
     [--gap 0.25] [--big 0] [--poll 0.2] [--json out.json] [--keep-tmp]

Starts `pixelrouter serve --demo` (this checkout's src/, SQLite and images in a temporary
folder, 127.0.0.1 on a free port, the server's default batch and engine settings), makes one
inference key, warms up (interactive requests and a batch of 4), then in one run:
  1. throughput: a batch of --items chat items (256x256, distinct prompts and seeds), from the
     submit to every item done (request_counts) and to status "completed" (the runner's upkeep
     finalizes a batch about once a second); then the same number of images as that many
     concurrent interactive POST /api/v1/chat/completions. Images/s of each and their ratio.
  2. interactive latency: --interactive requests one at a time (each sent --gap s after the
     previous answer), first with the engine idle, then beside a large batch (--big items;
     0: enough to outlast the interactive run, from the measured batch rate). The batch is
     cancelled afterwards (POST /api/v1/batches/{id}/cancel).
A batch is polled every --poll s through GET /api/v1/batches (status and request_counts, no
results), and read whole once it ended.
The engine's own time for one pipeline call of a batch comes from GET /api/v1/engine/status
(sampled while the batch of phase 1 runs): its wait estimate is the moving average of batch
durations times the batches ahead, so average = estimated_wait_s / batches_ahead. Beside the
interactive run a batch call is slower (the interactive requests' work shares the cores): it
is estimated as (the run's wall time - the interactive requests' generation_time) / the batch
calls the engine made meanwhile (the engine is never idle then). The reading to check:
interactive p99 beside a batch <= idle p99 + one batch call. Each interactive request's server
record (GET /api/v1/generation) splits its latency into generation_time (the engine, from the
start of its pipeline call to its encoded image) and the rest (its wait in the engine's queue
and the gateway's own work).
Prints one JSON object, then a markdown table. Demo weights: this measures the gateway's
batch path and the engine's priority, not klein 4B's speed.
"""

MODEL = "black-forest-labs/flux.2-klein-4b"


def chat_body(prompt: str, seed: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "modalities": ["image"],
        "image_config": {"aspect_ratio": "1:1", "image_size": "0.5K", "seed": seed},
    }


def batch_requests(tag: str, n: int) -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{tag}-{i}", "body": chat_body(f"a fox, {tag} {i}", 1000 + i)}
        for i in range(n)
    ]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    key: str  # an inference key
    pid: int
    log: Path


@contextlib.contextmanager
def server(args: argparse.Namespace) -> Iterator[Server]:
    from pixelrouter.keys import generate_key

    tmp = Path(tempfile.mkdtemp(prefix="pixelrouter-batchbench-"))
    log = tmp / "serve.log"
    port = free_port()
    admin = generate_key()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p
        ),
        "PIXELROUTER_ADMIN_KEY": admin,
        "PIXELROUTER_DATA_DIR": str(tmp / "data"),
        "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
    }
    cmd = [sys.executable, "-m", "pixelrouter.cli", "serve", "--demo", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    handle = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"pixelrouter serve exited ({proc.returncode}):\n{log_tail(log, 3000)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pixelrouter serve not ready in time:\n{log_tail(log, 3000)}")
            time.sleep(0.3)
        made = httpx.post(
            f"{base}/api/v1/keys",
            json={"name": "batch-bench"},
            headers={"authorization": f"Bearer {admin}"},
            timeout=30,
        )
        made.raise_for_status()
        yield Server(base, made.json()["key"], proc.pid, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        handle.close()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


class Client:
    def __init__(self, srv: Server) -> None:
        self.http = httpx.AsyncClient(
            base_url=srv.base + "/api/v1",
            headers={"authorization": f"Bearer {srv.key}"},
            timeout=httpx.Timeout(300.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=256),
        )

    async def chat(self, prompt: str, seed: int) -> tuple[float, str | None]:
        """(seconds, None) for an answer carrying an image, else (seconds, what went wrong)."""
        seconds, error, _ = await self.chat_with_id(prompt, seed)
        return seconds, error

    async def chat_with_id(self, prompt: str, seed: int) -> tuple[float, str | None, str | None]:
        """`chat`, and the generation id of the answer."""
        start = time.perf_counter()
        try:
            got = await self.http.post("/chat/completions", json=chat_body(prompt, seed))
        except httpx.HTTPError as exc:
            return time.perf_counter() - start, type(exc).__name__, None
        elapsed = time.perf_counter() - start
        if got.status_code != 200:
            return elapsed, f"HTTP {got.status_code}", None
        try:
            body = got.json()
            url = body["choices"][0]["message"]["images"][0]["image_url"]["url"]
        except (ValueError, KeyError, IndexError, TypeError):
            return elapsed, "no image", None
        return elapsed, None if url.startswith("data:image/") else "no image", body.get("id")

    async def generation(self, generation_id: str) -> dict[str, Any] | None:
        got = await self.http.get("/generation", params={"id": generation_id})
        return got.json()["data"] if got.status_code == 200 else None

    async def engine(self) -> dict[str, Any]:
        got = await self.http.get("/engine/status")
        got.raise_for_status()
        return got.json()["data"]  # type: ignore[no-any-return]

    async def submit(self, requests: list[dict[str, Any]]) -> str:
        got = await self.http.post(
            "/batches",
            json={"endpoint": "/v1/chat/completions", "model": MODEL, "requests": requests},
        )
        if got.status_code != 202:
            raise RuntimeError(f"batch refused: HTTP {got.status_code} {got.text[:300]}")
        return got.json()["id"]  # type: ignore[no-any-return]

    async def batch(self, batch_id: str) -> dict[str, Any]:
        got = await self.http.get(f"/batches/{batch_id}")
        got.raise_for_status()
        return got.json()  # type: ignore[no-any-return]

    async def summary(self, batch_id: str) -> dict[str, Any]:
        """The batch as the list shows it: status and request_counts, no results (a GET of
        the batch itself carries every finished item's result, which grows with the batch and
        would load the server it measures at each poll)."""
        got = await self.http.get("/batches", params={"limit": 10})
        got.raise_for_status()
        for row in got.json()["data"]:
            if row["id"] == batch_id:
                return row  # type: ignore[no-any-return]
        return await self.batch(batch_id)

    async def wait_batch(
        self, batch_id: str, start: float, poll: float, samples: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Poll until the batch ends; the seconds from `start` to every item done and to the
        terminal status, then the whole batch once (results included; that GET timed). With
        `samples`, engine status is read at each poll too."""
        items_done_s = None
        while True:
            body = await self.summary(batch_id)
            now = time.perf_counter() - start
            counts = body["request_counts"]
            if items_done_s is None and counts["completed"] + counts["failed"] >= counts["total"]:
                items_done_s = now
            if body["status"] in ("completed", "failed", "expired", "cancelled"):
                fetched = time.perf_counter()
                whole = await self.batch(batch_id)
                return {
                    "status": body["status"],
                    "counts": counts,
                    "items_done_s": items_done_s if items_done_s is not None else now,
                    "ended_s": now,
                    "get_with_results_ms": _ms(time.perf_counter() - fetched),
                    "results": whole.get("results") or [],
                }
            if samples is not None:
                samples.append(await self.engine())
            await asyncio.sleep(poll)

    async def item_generation_times(self, results: list[dict[str, Any]]) -> list[float]:
        """Per succeeded batch item, the engine's generation_time (s): from the start of the
        pipeline call that held it to its encoded image, i.e. about one batch call."""
        times = []
        for result in results:
            response = result.get("response") or {}
            if response.get("request_id"):
                record = await self.generation(response["request_id"])
                if record and record.get("generation_time") is not None:
                    times.append(record["generation_time"] / 1000)
        return times

    async def aclose(self) -> None:
        await self.http.aclose()


def one_call_seconds(status: dict[str, Any]) -> float | None:
    """The engine's moving average of one pipeline call, from its wait estimate (scheduler.py:
    estimated_wait_s = average * (ceil(queued_images / max_batch_size) + running))."""
    ahead = math.ceil(status["queued_images"] / max(1, status["max_batch_size"]))
    ahead += 1 if status["running_batch"] else 0
    if not ahead or not status["estimated_wait_s"]:
        return None
    return float(status["estimated_wait_s"]) / ahead


def engine_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    sizes = Counter({int(k): v for k, v in after["batch_sizes"].items()})
    sizes.subtract({int(k): v for k, v in before["batch_sizes"].items()})
    return {
        "engine_calls": after["batches_run"] - before["batches_run"],
        "images": after["images_generated"] - before["images_generated"],
        "call_sizes": {str(k): v for k, v in sorted(sizes.items()) if v},
    }


async def sequential(
    client: Client, tag: str, n: int, gap: float, stop: asyncio.Event | None = None
) -> dict[str, Any]:
    """`n` interactive requests, one at a time, each `gap` s after the previous answer."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    ids: list[str] = []
    found: list[dict[str, Any]] = []  # the engine as each request found it (read just before)
    start = time.perf_counter()
    for i in range(n):
        found.append(await client.engine())
        seconds, error, generation_id = await client.chat_with_id(f"a fox, {tag} {i}", 5000 + i)
        if error:
            errors[error] += 1
        else:
            latencies.append(seconds)
            if generation_id:
                ids.append(generation_id)
        if i + 1 < n:
            await asyncio.sleep(gap)
    wall = time.perf_counter() - start
    # The server's own record of each: its latency, and the engine's time from the start of
    # the pipeline call that held it to its encoded image (generation_time).
    records = [r for r in [await client.generation(g) for g in ids] if r]
    server = [r["latency"] / 1000 for r in records if r.get("latency") is not None]
    engine = [r["generation_time"] / 1000 for r in records if r.get("generation_time") is not None]
    before_engine = [
        (r["latency"] - r["generation_time"]) / 1000
        for r in records
        if r.get("latency") is not None and r.get("generation_time") is not None
    ]
    return {
        "server_latency_p50_ms": _ms(_pct(server, 50)),
        "server_latency_p99_ms": _ms(_pct(server, 99)),
        "generation_time_p50_ms": _ms(_pct(engine, 50)),
        "generation_time_p99_ms": _ms(_pct(engine, 99)),
        "latency_minus_generation_p50_ms": _ms(_pct(before_engine, 50)),
        "latency_minus_generation_p99_ms": _ms(_pct(before_engine, 99)),
        "found_running_batch": sum(1 for f in found if f["running_batch"]),
        "found_queued_images_max": max((f["queued_images"] for f in found), default=None),
        "found_batch_queued_images_max": max(
            (f["batch_queued_images"] for f in found), default=None
        ),
        "requests": n,
        "ok": len(latencies),
        "errors": dict(errors),
        "wall_s": round(wall, 3),
        "p50_ms": _ms(_pct(latencies, 50)),
        "p99_ms": _ms(_pct(latencies, 99)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "mean_ms": _ms(statistics.fmean(latencies) if latencies else None),
        "server_latency_ms": [_ms(x) for x in server],
        "generation_time_ms": [_ms(x) for x in engine],
        "latencies_ms": [_ms(x) for x in latencies],
    }


async def sample_engine(client: Client, every: float, into: list[dict[str, Any]]) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError):
            into.append({"t": time.perf_counter(), **(await client.engine())})
        await asyncio.sleep(every)


async def run(srv: Server, args: argparse.Namespace) -> dict[str, Any]:
    client = Client(srv)
    report: dict[str, Any] = {}
    try:
        # Warm-up: both paths once, so no first-call cost lands in a measurement.
        for i in range(2):
            await client.chat(f"warm {i}", i)
        await asyncio.gather(*(client.chat(f"warm c{i}", 100 + i) for i in range(4)))
        warm = await client.submit(batch_requests("warm", 4))
        await client.wait_batch(warm, time.perf_counter(), args.poll)
        first = await client.engine()
        max_batch = int(first["max_batch_size"])
        print(f"warm; engine max_batch_size {max_batch}", file=sys.stderr)

        # 1a. A batch of N alone.
        report["load_before_batch"] = loadavg()
        samples: list[dict[str, Any]] = []
        before = await client.engine()
        start = time.perf_counter()
        batch_id = await client.submit(batch_requests("thru", args.items))
        done = await client.wait_batch(batch_id, start, args.poll, samples)
        after = await client.engine()
        calls = [c for c in (one_call_seconds(s) for s in samples) if c is not None]
        delta = engine_delta(before, after)
        item_times = await client.item_generation_times(done.pop("results"))
        report["batch"] = {
            "items": args.items,
            **done,
            "item_generation_time_p50_ms": _ms(_pct(item_times, 50)),
            "item_generation_time_max_ms": _ms(max(item_times) if item_times else None),
            "images_per_s": round(args.items / done["items_done_s"], 3),
            "per_item_ms": _ms(done["items_done_s"] / args.items),
            "images_per_s_to_completed": round(args.items / done["ended_s"], 3),
            **delta,
            "wall_per_engine_call_ms": _ms(done["items_done_s"] / max(1, delta["engine_calls"])),
            "engine_call_ms_samples": [_ms(c) for c in calls],
            "engine_call_ms": _ms(statistics.median(calls) if calls else None),
            "load_after": loadavg(),
        }
        print(f"batch of {args.items}: {report['batch']}", file=sys.stderr)

        # 1b. The same N images as N concurrent interactive requests.
        report["load_before_concurrent"] = loadavg()
        before = await client.engine()
        start = time.perf_counter()
        answers = await asyncio.gather(
            *(client.chat(f"a fox, conc {i}", 3000 + i) for i in range(args.items))
        )
        wall = time.perf_counter() - start
        after = await client.engine()
        ok = [s for s, e in answers if e is None]
        report["concurrent"] = {
            "requests": args.items,
            "ok": len(ok),
            "errors": dict(Counter(e for _, e in answers if e)),
            "wall_s": round(wall, 3),
            "images_per_s": round(len(ok) / wall, 3),
            "per_item_ms": _ms(wall / args.items),
            "p50_ms": _ms(_pct(ok, 50)),
            "max_ms": _ms(max(ok) if ok else None),
            **engine_delta(before, after),
            "load_after": loadavg(),
        }
        report["batch_vs_interactive_throughput"] = round(
            report["batch"]["images_per_s"] / report["concurrent"]["images_per_s"], 3
        )
        print(f"concurrent {args.items}: {report['concurrent']}", file=sys.stderr)

        # 2a. Interactive latency, engine idle.
        report["load_before_idle"] = loadavg()
        before = await client.engine()
        idle = await sequential(client, "idle", args.interactive, args.gap)
        idle.update(engine_delta(before, await client.engine()), load_after=loadavg())
        report["idle"] = idle
        print(f"idle: p50 {idle['p50_ms']} p99 {idle['p99_ms']} ms", file=sys.stderr)

        # 2b. The same beside a large batch.
        call_s = (report["batch"]["engine_call_ms"] or 0) / 1000 or (
            report["batch"]["wall_per_engine_call_ms"] / 1000
        )
        expected_s = args.interactive * ((idle["p50_ms"] / 1000) + args.gap + call_s)
        big = args.big or max(
            args.items, math.ceil(report["batch"]["images_per_s"] * expected_s * 2) + 16
        )
        report["load_before_beside"] = loadavg()
        big_id = await client.submit(batch_requests("big", big))
        started = time.perf_counter()
        while True:  # until the engine holds batch work
            status = await client.engine()
            if status["batch_queued_images"] or status["running_batch"]:
                break
            if time.perf_counter() - started > 30:
                raise RuntimeError("the big batch never reached the engine")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let it settle into its steady state
        before = await client.engine()
        trace: list[dict[str, Any]] = []
        sampler = asyncio.create_task(sample_engine(client, 0.5, trace))
        try:
            beside = await sequential(client, "beside", args.interactive, args.gap)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        after = await client.engine()
        mid = await client.batch(big_id)
        counts = mid["request_counts"]
        beside.update(engine_delta(before, after), load_after=loadavg())
        beside["batch_items"] = big
        beside["batch_items_done_at_end"] = counts["completed"] + counts["failed"]
        beside["batch_outlasted_run"] = mid["status"] == "in_progress" and (
            counts["completed"] + counts["failed"] < counts["total"]
        )
        beside["engine_batch_queued_images_max"] = max(
            (s["batch_queued_images"] for s in trace), default=None
        )
        beside["engine_queued_images_max"] = max((s["queued_images"] for s in trace), default=None)
        beside_times = await client.item_generation_times(mid.get("results") or [])
        beside["batch_item_generation_time_p50_ms"] = _ms(_pct(beside_times, 50))
        beside["batch_item_generation_time_max_ms"] = _ms(max(beside_times, default=None))
        report["beside_batch"] = beside
        print(f"beside: p50 {beside['p50_ms']} p99 {beside['p99_ms']} ms", file=sys.stderr)

        cancel_at = time.perf_counter()
        got = await client.http.post(f"/batches/{big_id}/cancel")
        cancelled = await client.wait_batch(big_id, cancel_at, args.poll)
        cancelled.pop("results")
        report["cancel"] = {"http": got.status_code, **cancelled}
        while True:  # let the engine drain what the runner had already handed it
            status = await client.engine()
            if not status["queue_depth"] and not status["running_batch"]:
                break
            await asyncio.sleep(0.2)
        report["cancel"]["engine_idle_after_s"] = round(time.perf_counter() - cancel_at, 3)

        bound = (idle["p99_ms"] or 0) + (report["batch"]["engine_call_ms"] or 0)
        report["bound_idle_p99_plus_one_call_ms"] = round(bound, 1)
        report["beside_p99_within_bound"] = (beside["p99_ms"] or math.inf) <= bound
        # The same with a batch call as long as it was beside the interactive run (the calls
        # slow down when the interactive requests' own work shares the two cores). The engine
        # is never idle then, so its batch calls took the run's wall time less the interactive
        # requests' own generation time.
        batch_calls = beside["engine_calls"] - beside["ok"]
        interactive_engine_s = sum(beside["generation_time_ms"]) / 1000
        per_call = (beside["wall_s"] - interactive_engine_s) / batch_calls if batch_calls else None
        beside["batch_calls"] = batch_calls
        beside["engine_per_batch_call_ms"] = _ms(per_call)
        beside_bound = (idle["p99_ms"] or 0) + (beside["engine_per_batch_call_ms"] or 0)
        report["bound_idle_p99_plus_one_call_beside_ms"] = round(beside_bound, 1)
        report["beside_p99_within_bound_beside"] = (beside["p99_ms"] or math.inf) <= beside_bound
        return report
    finally:
        await client.aclose()


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(r: dict[str, Any]) -> str:
    b, c, i, s = r["batch"], r["concurrent"], r["idle"], r["beside_batch"]
    sizes = ", ".join(f"{n}x{k}" for k, n in b["call_sizes"].items())
    rows = [
        ("| measurement | value | load (1/5/15 min, after) |", ""),
        ("|---|---:|---|", ""),
        (
            f"| batch of {b['items']}: images/s, submit to every item done | "
            f"{b['images_per_s']:.2f} ({b['items_done_s']:.2f} s) |",
            b["load_after"],
        ),
        (f"| batch: per item (wall / {b['items']}) | {b['per_item_ms']:.0f} ms |", ""),
        (
            "| batch: submit to status completed | "
            f"{b['ended_s']:.2f} s ({b['images_per_s_to_completed']:.2f} images/s; then one "
            f"GET with its {b['items']} results: {_f(b['get_with_results_ms'], 0)} ms) |",
            "",
        ),
        (f"| batch: engine calls (images x calls) | {b['engine_calls']} ({sizes}) |", ""),
        (
            f"| {c['requests']} concurrent interactive: images/s | "
            f"{c['images_per_s']:.2f} ({c['wall_s']:.2f} s, {c['ok']} ok) |",
            c["load_after"],
        ),
        (
            "| batch / concurrent interactive throughput | "
            f"x{r['batch_vs_interactive_throughput']:.2f} |",
            "",
        ),
        (
            "| one engine call of a full batch (engine's moving average) | "
            f"{_f(b['engine_call_ms'], 0)} ms |",
            "",
        ),
        (f"| batch wall / engine calls | {_f(b['wall_per_engine_call_ms'], 0)} ms |", ""),
        (
            f"| interactive, idle: p50 / p99 / max ({i['ok']} of {i['requests']}) | "
            f"{_f(i['p50_ms'], 0)} / {_f(i['p99_ms'], 0)} / {_f(i['max_ms'], 0)} ms |",
            i["load_after"],
        ),
        (
            f"| interactive beside a {s['batch_items']}-item batch: p50 / p99 / max "
            f"({s['ok']} of {s['requests']}) | "
            f"{_f(s['p50_ms'], 0)} / {_f(s['p99_ms'], 0)} / {_f(s['max_ms'], 0)} ms |",
            s["load_after"],
        ),
        (
            "| interactive beside the batch: server latency minus generation_time, p50 / p99 "
            f"(queue wait and gateway) | {_f(s['latency_minus_generation_p50_ms'], 0)} / "
            f"{_f(s['latency_minus_generation_p99_ms'], 0)} ms (idle: "
            f"{_f(i['latency_minus_generation_p50_ms'], 0)} / "
            f"{_f(i['latency_minus_generation_p99_ms'], 0)} ms) |",
            "",
        ),
        (
            "| beside: requests that found a batch call running; batch images queued at the "
            f"engine, max | {s['found_running_batch']} of {s['requests']}; "
            f"{s['engine_batch_queued_images_max']} |",
            "",
        ),
        (
            "| interactive generation_time p50, idle / beside the batch | "
            f"{_f(i['generation_time_p50_ms'], 0)} / {_f(s['generation_time_p50_ms'], 0)} ms |",
            "",
        ),
        (
            "| one batch call beside the interactive run: (run wall - interactive "
            f"generation_time) / {s['batch_calls']} batch calls | "
            f"{_f(s['engine_per_batch_call_ms'], 0)} ms |",
            "",
        ),
        (
            "| bound: idle p99 + one engine call (batch alone) | "
            f"{r['bound_idle_p99_plus_one_call_ms']:.0f} ms "
            f"({'met' if r['beside_p99_within_bound'] else 'NOT met'}) |",
            "",
        ),
        (
            "| bound: idle p99 + one batch call beside | "
            f"{r['bound_idle_p99_plus_one_call_beside_ms']:.0f} ms "
            f"({'met' if r['beside_p99_within_bound_beside'] else 'NOT met'}) |",
            "",
        ),
        (
            "| batch items done during the interactive run; still running at its end | "
            f"{s['batch_items_done_at_end']} of {s['batch_items']}; "
            f"{'yes' if s['batch_outlasted_run'] else 'NO'} |",
            "",
        ),
        (
            "| engine calls during the interactive run (images x calls) | "
            + ", ".join(f"{n}x{k}" for k, n in s["call_sizes"].items())
            + " |",
            "",
        ),
        (
            "| cancel: to status cancelled; engine idle after | "
            f"{r['cancel']['ended_s']:.2f} s; {r['cancel']['engine_idle_after_s']:.2f} s |",
            "",
        ),
    ]
    lines = []
    for text, load in rows:
        if text.startswith(("|---", "| measurement ")):
            lines.append(text)
        else:
            lines.append(f"{text} {' / '.join(str(x) for x in load) if load else ''} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=48, help="items of the throughput batch")
    parser.add_argument(
        "--interactive", type=int, default=30, help="sequential interactive requests per run"
    )
    parser.add_argument("--gap", type=float, default=0.25, help="s between an answer and the next")
    parser.add_argument(
        "--big", type=int, default=0, help="items of the batch beside them (0: auto)"
    )
    parser.add_argument("--poll", type=float, default=0.2, help="s between batch polls")
    parser.add_argument("--startup-timeout", type=float, default=180.0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (log)")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    started = time.time()
    meta: dict[str, Any] = {
        "benchmark": "batches",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "omp_num_threads": os.environ["OMP_NUM_THREADS"],
            "load_average_at_start": loadavg(),
        },
        "source": git_state(),
        "settings": {
            "items": args.items,
            "interactive": args.interactive,
            "gap_s": args.gap,
            "big": args.big,
            "poll_s": args.poll,
            "image": "256x256 (1:1, 0.5K)",
        },
    }
    with server(args) as srv:
        report = {**meta, **asyncio.run(run(srv, args))}
    report["load_average_at_end"] = loadavg()
    report["wall_s"] = round(time.time() - started, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print()
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
