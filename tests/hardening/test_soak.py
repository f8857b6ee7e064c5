"""The 60-second soak (bench/soak.py): a real demo server under steady mixed traffic (sizes,
streams, chat, edits, client errors, cancellations, clients that leave mid-answer); no 5xx and
no lost request, no reservation left open, the ledger equal to the delivered images' prices,
every answer's record final and priced as answered, nothing charged to a client that left
mid-answer, /metrics labels from the routes only, memory within its bound."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import run_bench

pytestmark = pytest.mark.e2e


def test_a_minute_of_mixed_traffic_loses_nothing(tmp_path: Path) -> None:
    report = run_bench(
        "soak.py", "--seconds", "60", "--rate", "2", out=tmp_path / "soak.json", timeout=420
    )
    assert report["failures"] == [], report
    assert report["requests"] >= 100
    assert set(report["by_kind"]) >= {
        "images",
        "images-stream",
        "chat",
        "edits",
        "client-error",
        "left-mid-answer",
    }
    assert report["left_mid_answer_charged"] == [] and report["stray_metric_labels"] == []
    assert report["by_class"].get("2xx", 0) >= 50
    assert report["by_class"].get("4xx", 0) >= 5
    assert report["open_reservations"] == 0
    assert report["ledger_total_micro"] == report["delivered_total_micro"] > 0
