"""How the pages print figures (no browser): money, uptime colours, app links."""

from __future__ import annotations

import pytest

from pixelrouter.web.display import percent_text, safe_link, uptime_level, usd_text


@pytest.mark.parametrize(
    ("micro", "text"),
    [
        (14_000, "$0.014"),
        (17_000, "$0.017"),
        (28_000, "$0.028"),
        (90_000, "$0.09"),
        (1_500_000, "$1.50"),
        (0, "$0.00"),
        (1, "$0.000001"),
    ],
)
def test_usd_text_prints_every_significant_decimal(micro: int, text: str) -> None:
    assert usd_text(micro) == text


@pytest.mark.parametrize(
    ("uptime", "level"),
    [
        (100.0, "ok"),
        (95.0, "ok"),
        (94.9, "warn"),
        (85.0, "warn"),
        (84.9, "bad"),
        (0.0, "bad"),
        (None, "none"),
    ],
)
def test_uptime_colours_follow_the_thresholds(uptime: float | None, level: str) -> None:
    assert uptime_level(uptime) == level


def test_only_http_referers_become_links() -> None:
    assert safe_link("https://app.example/x") == "https://app.example/x"
    assert safe_link("http://app.example") == "http://app.example"
    assert safe_link("javascript:alert(1)") is None
    assert safe_link(" JavaScript:alert(1)") is None
    assert safe_link("data:text/html,hi") is None
    assert safe_link(None) is None
    assert percent_text(None) == "—" and percent_text(99.56) == "99.6%"
