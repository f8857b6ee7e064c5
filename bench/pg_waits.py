"""What PostgreSQL's backends wait on while a benchmark runs, and where the machine's CPU goes
(see --help)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg

USAGE = """\
Run beside a benchmark, e.g.:
  PYTHONPATH=src .venv/bin/python bench/bookkeeping.py --concurrency 64 --seconds 8 &
  sleep 14; .venv/bin/python bench/pg_waits.py --seconds 4 --pid $!

Samples `pg_stat_activity` every --interval seconds for --seconds: the share of samples of the
benchmark's client backends (databases named pixelrouter_bench_%) in each state and wait
event (`CPU` when active and not waiting; `ClientRead` when idle in a transaction or waiting
for the client's next statement). Also the machine's CPU over the same seconds (/proc/stat):
busy share of all cores, and the CPU seconds per second of PostgreSQL's processes and of
--pid (the benchmark), so a run shows whether the client, the server or the disk is the
limit. Prints one JSON object.
"""

SAMPLE = """
SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU')
FROM pg_stat_activity
WHERE datname LIKE 'pixelrouter_bench_%' AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""


def _ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--pid", type=int, default=0, help="the benchmark's process")
    args = parser.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    waits: Counter[str] = Counter()
    samples = 0
    with psycopg.connect(args.url, autocommit=True) as conn:
        before_pg = {pid: _ticks(pid) for pid in _postgres_pids()}
        before_client = _ticks(args.pid) if args.pid else 0
        busy0, total0 = _cpu()
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            for state, wait in conn.execute(SAMPLE).fetchall():
                waits["ClientRead" if state != "active" else wait] += 1
            samples += 1
            time.sleep(args.interval)
        elapsed = time.monotonic() - start
        busy1, total1 = _cpu()
        after_pg = {pid: _ticks(pid) for pid in _postgres_pids()}
        client = (_ticks(args.pid) - before_client) if args.pid else 0
    pg_ticks = sum(t - before_pg.get(pid, 0) for pid, t in after_pg.items())
    seen = sum(waits.values()) or 1
    result = {
        "seconds": round(elapsed, 2),
        "samples": samples,
        "backends_per_sample": round(seen / max(samples, 1), 1),
        "waits_share": {k: round(v / seen, 3) for k, v in waits.most_common()},
        "machine_busy_share": round((busy1 - busy0) / max(total1 - total0, 1), 3),
        "cores": os.cpu_count(),
        "postgres_cpu_s_per_s": round(pg_ticks / hz / elapsed, 3),
        "client_cpu_s_per_s": round(client / hz / elapsed, 3) if args.pid else None,
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
