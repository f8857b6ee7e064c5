"""Schemathesis against the service's own `/openapi.json`, in process: every operation,
positive and negative data, with an inference and a management key.

Shared by `tests/hardening/test_fuzz.py` (short, deterministic, in `make test`) and
`bench/fuzz.py` (long, random). A failure is any 5xx, any 4xx outside the SPEC §5 envelope,
a response without `X-Generation-Id`, or a response the document does not describe.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from pixelrouter.config import Settings
from pixelrouter.keys import generate_key

CALL_TIMEOUT_S = 600
# Operations only a management key may call; the others get the inference key.
MANAGEMENT_PATHS = ("/api/v1/keys", "/api/v1/credits", "/api/v1/activity", "/api/v1/loras")


class EnvelopeViolation(AssertionError):
    """A response that breaks SPEC §5 or forgets the generation id header."""


@schemathesis.check
def spec_error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every response carries `X-Generation-Id`; no 5xx; every 4xx is the SPEC §5 envelope
    with `code` equal to the status, a message and `metadata.error_type`."""
    status = response.status_code
    if not response.headers.get("x-generation-id", [""])[0].startswith("gen-"):
        raise EnvelopeViolation(f"{status} without an X-Generation-Id header")
    if status >= 500:
        raise EnvelopeViolation(f"server error {status}: {response.text[:300]}")
    if status < 400:
        return None
    try:
        body = response.json()
    except Exception as exc:
        raise EnvelopeViolation(f"{status} is not JSON: {response.text[:200]!r}") from exc
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(body) != {"error"}:
        raise EnvelopeViolation(f"{status} is not the SPEC §5 envelope: {body!r:.300}")
    metadata = error.get("metadata")
    if (
        error.get("code") != status
        or not isinstance(error.get("message"), str)
        or not error["message"]
        or not isinstance(metadata, dict)
        or not isinstance(metadata.get("error_type"), str)
        or "Traceback" in response.text
    ):
        raise EnvelopeViolation(f"{status} envelope is incomplete: {error!r:.300}")
    return None


CHECKS = [
    spec_error_envelope,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@dataclass
class FuzzApp:
    """The real app (demo engine, SQLite), started, with both kinds of key."""

    app: Any
    schema: Any
    admin_key: str
    key: str

    def headers_for(self, path: str) -> dict[str, str]:
        admin = path.startswith(MANAGEMENT_PATHS)
        return {"Authorization": f"Bearer {self.admin_key if admin else self.key}"}


@contextmanager
def fuzz_app(
    data_dir: Path, providers: list[Any], database_url: str | None = None
) -> Iterator[FuzzApp]:
    """The app on `database_url` (default: SQLite under `data_dir`). PostgreSQL is the
    stricter backend (its text holds no NUL): a fuzz run there finds what SQLite forgives."""
    from pixelrouter.app import create_app

    admin_key = generate_key()
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url or f"sqlite:///{data_dir / 'fuzz.db'}",
        admin_key=admin_key,
        demo=True,
        keepalive_interval_s=0.2,
    )
    app = create_app(settings, providers=providers)
    # Unknown query parameters are ignored, as HTTP APIs do (SDKs send their own); a negative
    # case made only of one would be "accepted" without saying anything about the server.
    # The key is ours to send (`headers_for`), not generated: a mutated Authorization header
    # would be replaced by a valid one and then "accepted".
    config = schemathesis.Config.from_dict(
        {"generation": {"allow-extra-parameters": False, "with-security-parameters": False}}
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)  # + lifespan
    with asgi.get_client(app) as client:
        created = client.post(
            "/api/v1/keys",
            json={"name": "fuzz"},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        assert created.status_code == 201, created.text
        key = created.json()["key"]
    try:
        yield FuzzApp(app, schema, admin_key, key)
    finally:
        asgi.shutdown_lifespans()


@dataclass
class OperationReport:
    label: str
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None  # why no case could be made


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}".strip()


def fuzz_operation(
    target: FuzzApp,
    operation: Any,
    *,
    max_examples: int,
    mode: GenerationMode,
    seed: int | None,
) -> OperationReport:
    """Run `max_examples` cases of one operation; failures are collected, not raised, so one
    run reports every operation. Hypothesis still shrinks each failure to a small case."""
    report = OperationReport(f"{operation.label} [{mode.value}]")
    headers = target.headers_for(operation.path)
    seen_failures: set[str] = set()

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=seed is None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    def run(case: Any) -> None:
        report.cases += 1
        try:
            # A valid request can ask for 4 images of 2 MP at 100 steps: minutes on a CPU.
            response = case.call(headers=headers, timeout=CALL_TIMEOUT_S)
            report.statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis groups its failures
            text = _describe(exc)
            first = text.splitlines()[0][:200]
            if first not in seen_failures:
                seen_failures.add(first)
                report.failures.append(
                    f"{text[:1500]}\n  reproduce: {case.as_curl_command(headers=headers)[:1500]}"
                )

    if seed is not None:
        run = hypothesis.seed(seed)(run)
    started = time.perf_counter()
    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            report.failures.append(traceback.format_exc(limit=5))
        report.skipped = "no invalid value exists for its inputs (free-form strings only)"
    except Exception:  # an error in the harness itself, not a case
        report.failures.append(traceback.format_exc(limit=5))
    report.seconds = time.perf_counter() - started
    return report


def metric_endpoints(target: FuzzApp) -> set[str]:
    """The `endpoint` label values `/metrics` holds after a run: they must come from the
    app's routes, however odd the paths it was sent."""
    with asgi.get_client(target.app) as client:
        text = client.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    return {
        sample.labels["endpoint"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "endpoint" in sample.labels
    }


def route_templates(target: FuzzApp) -> set[str]:
    """Every path template the app serves, as `/openapi.json` lists them, and the mounts."""
    paths = set(target.schema.raw_schema["paths"])
    return paths | {"/static/{path}", "unmatched", "other"}


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(list(operation.body))


def fuzz_all(
    target: FuzzApp,
    *,
    max_examples: int,
    seed: int | None = None,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    examples_for: dict[str, int] | None = None,
) -> list[OperationReport]:
    reports = []
    for result in target.schema.get_all_operations():
        operation = result.ok()
        for mode in modes:
            if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
                continue  # nothing to make invalid
            n = (examples_for or {}).get(operation.label, max_examples)
            reports.append(fuzz_operation(target, operation, max_examples=n, mode=mode, seed=seed))
    return reports
