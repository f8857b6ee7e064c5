"""Schemathesis against the service's own `/openapi.json`, short and deterministic: every
operation, valid and invalid data. No 5xx, every 4xx in the SPEC §5 envelope, every response
as the document describes it (`fuzzing.py` says what is checked; `bench/fuzz.py` runs the long
random version)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbutil import fresh_postgres_url

from .fuzzing import fuzz_all, fuzz_app, metric_endpoints, route_templates

EXAMPLES = 6  # per operation and mode; deterministic (derandomized) in this short run


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, demo_provider: object):  # type: ignore[no-untyped-def]
    """On PostgreSQL, the stricter backend: a NUL in any text it stores is an error there
    (SQLite takes it), so fuzzed text finds what the SQLite run would not."""
    with (
        fresh_postgres_url() as database_url,
        fuzz_app(Path(tmp_path_factory.mktemp("fuzz")), [demo_provider], database_url) as app,
    ):
        yield app


def test_every_operation_answers_in_the_envelope_and_as_documented(target) -> None:  # type: ignore[no-untyped-def]
    reports = fuzz_all(target, max_examples=EXAMPLES)
    operations = {report.label.split(" [")[0] for report in reports}
    assert len(operations) >= 20, sorted(operations)  # the whole API, not a corner of it
    failures = [f"{report.label}:\n{failure}" for report in reports for failure in report.failures]
    assert not failures, "\n\n".join(failures[:10])
    # Every operation ran; those with inputs ran several distinct cases.
    assert all(report.cases >= 1 for report in reports if report.skipped is None)
    assert sum(report.cases for report in reports) >= 3 * len(reports)
    # However odd the paths it was sent, /metrics labels come from the routes only.
    assert metric_endpoints(target) <= route_templates(target)
