"""Long fuzzing run: schemathesis against the service's own `/openapi.json`, every operation, valid
and invalid data, random (not derandomized) cases, the real app on the demo engine and SQLite.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/fuzz.py [--examples 200] [--seed N] [--json FILE]
     [--db postgresql://postgres@127.0.0.1:5432/test]

With `--db` the app runs on that database (its tables are created, and left there): PostgreSQL
is the stricter backend (no NUL in text, 32-bit INTEGER columns), where fuzzed input finds what
SQLite forgives. The short run in `make test` uses PostgreSQL. After the run, every `/metrics`
label value must be one of the app's route templates, however odd the paths it was sent.

The checks are those of the short run in `make test` (tests/hardening/fuzzing.py): no 5xx,
every 4xx in the SPEC §5 envelope, an `X-Generation-Id` on every response, status codes,
content types and bodies as the document describes them, invalid data refused. Prints a table
of operations, cases and statuses, then every failure with a curl command that reproduces it.
Exit status 1 when anything failed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.hardening.fuzzing import (  # noqa: E402
    fuzz_all,
    fuzz_app,
    metric_endpoints,
    route_templates,
)

from pixelrouter.engine.pipeline import EngineConfig  # noqa: E402
from pixelrouter.providers.local import LocalProvider  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="cases per operation and mode")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--db", help="database URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    provider = LocalProvider(config=EngineConfig(demo=True, device="cpu"))
    if not provider.engine.wait_ready(300):
        raise SystemExit(f"the demo engine did not load: {provider.engine.readiness()}")
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        fuzz_app(Path(tmp), [provider], args.db) as target,
    ):
        reports = fuzz_all(target, max_examples=args.examples, seed=seed)
        stray_labels = sorted(metric_endpoints(target) - route_templates(target))
    seconds = time.perf_counter() - started
    rows = [
        {
            "operation": r.label,
            "cases": r.cases,
            "statuses": dict(sorted(r.statuses.items())),
            "failures": r.failures,
            "skipped": r.skipped,
            "seconds": round(r.seconds, 1),
        }
        for r in reports
    ]
    summary = {
        "seed": seed,
        "examples": args.examples,
        "operations": len({r.label.split(" [")[0] for r in reports}),
        "cases": sum(r.cases for r in reports),
        "failures": sum(len(r.failures) for r in reports) + bool(stray_labels),
        "stray_metric_labels": stray_labels,
        "server_errors": sum(n for r in reports for s, n in r.statuses.items() if s >= 500),
        "seconds": round(seconds, 1),
        "runs": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    print("| operation | cases | statuses | failures |\n|---|---:|---|---:|")
    for row in rows:
        statuses = " ".join(f"{s}×{n}" for s, n in row["statuses"].items()) or row["skipped"]
        print(f"| {row['operation']} | {row['cases']} | {statuses} | {len(row['failures'])} |")
    print(
        f"\nseed {seed}: {summary['cases']} cases over {summary['operations']} operations in "
        f"{seconds:.0f} s; {summary['failures']} failure(s), {summary['server_errors']} 5xx"
    )
    for row in rows:
        for failure in row["failures"]:
            print(f"\n{row['operation']}:\n{failure}")
    if stray_labels:
        print(f"\n/metrics holds label values that are no route: {stray_labels[:10]}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
