"""Whose failure is it: the one rule (`errors.provider_caused`) that routing, the HTTP providers
and the statistics all ask, and the narrower one (`provider_down`) that uptime and circuits use.
Every error class lives in `errors.py`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pixelrouter.errors import (
    InvalidRequest,
    PaymentRequired,
    PixelrouterError,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    provider_caused,
    provider_down,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "pixelrouter"


@pytest.mark.parametrize(
    ("status", "caused", "down"),
    [
        (500, True, True),
        (502, True, True),  # garbage or no image
        (503, True, True),  # not ready
        (504, True, True),  # its own timeout
        (408, True, True),  # the deadline ran out while it worked
        (429, True, False),  # rate limited: another provider may serve it; this one is up
        (400, False, False),  # the client's fault: another provider would refuse it too
        (402, False, False),
        (404, False, False),
        (413, False, False),
        (200, False, False),
    ],
)
def test_what_is_provider_caused(status: int, caused: bool, down: bool) -> None:
    assert provider_caused(status) is caused
    assert provider_down(status) is down


@pytest.mark.parametrize(
    ("error", "caused"),
    [
        (ProviderError("upstream answered HTTP 500"), True),
        (ProviderError("upstream refused the credentials", status=401), True),  # ours, not theirs
        (ProviderUnavailable("loading"), True),
        (ServiceUnavailable("busy"), True),
        (RequestTimeout("too slow"), True),
        (RateLimited("slow down", retry_after_s=3), True),
        (InvalidRequest("the prompt was refused"), False),
        (PaymentRequired("no credit"), False),
        (TimeoutError(), True),
        (RuntimeError("a bug in a provider's code"), True),
    ],
)
def test_an_error_is_judged_by_the_same_rule(error: BaseException, caused: bool) -> None:
    assert provider_caused(error) is caused


def test_every_public_error_class_is_defined_in_errors_py() -> None:
    """One module to read for every error a layer can raise (private control-flow signals,
    named with a leading underscore, stay beside the code they steer)."""
    elsewhere = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases
            }
            if bases & {
                "Exception",
                "ValueError",
                "RuntimeError",
                PixelrouterError.__name__,
            } or any(b.endswith(("Error", "Failed", "Unavailable")) for b in bases):
                elsewhere.append(f"{path.relative_to(SRC)}: {node.name}")
    assert elsewhere == []
