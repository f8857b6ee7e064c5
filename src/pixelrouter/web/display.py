"""How the pages print figures: money from integer micro-dollars, percentages, durations.

`static/model.js` prints the pricing calculator's money the same way (`usdText`).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pixelrouter.catalog import MICRO_PER_USD

UPTIME_GREEN = 95.0  # an hour at or above this is green
UPTIME_YELLOW = 85.0  # at or above this yellow, below red


def usd_text(micro: int) -> str:
    """`$0.014`, `$0.14`, `$1.50`: every significant decimal, at least two."""
    sign = "-" if micro < 0 else ""
    whole, fraction = divmod(abs(micro), MICRO_PER_USD)
    decimals = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{decimals}"


def percent_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def seconds_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def rate_text(value: float | None) -> str:
    """Image tokens per second."""
    return "—" if value is None else f"{value:,.0f} tok/s"


def count_text(value: int) -> str:
    return f"{value:,}"


def uptime_level(value: float | None) -> str:
    """The colour of an hour's uptime bar: ok (green), warn (yellow), bad (red), none."""
    if value is None:
        return "none"
    if value >= UPTIME_GREEN:
        return "ok"
    return "warn" if value >= UPTIME_YELLOW else "bad"


def safe_link(url: str | None) -> str | None:
    """An app's HTTP-Referer as a link target, only when it is an http(s) URL: any client
    can send any referer, and a `javascript:` one must never become a link."""
    if url and url.strip().lower().startswith(("http://", "https://")):
        return url.strip()
    return None


STATUS_TEXT = {0: ("Up", "ok"), -1: ("Degraded", "degraded"), -2: ("Down", "down")}


def status_text(status: int) -> tuple[str, str]:
    """(label, css class) of an endpoint status (0 ok, -1 degraded, -2 down)."""
    return STATUS_TEXT.get(status, ("Unknown", ""))


def day_text(unix_seconds: int) -> str:
    moment = datetime.fromtimestamp(unix_seconds, UTC)
    return f"{moment:%B} {moment.day}, {moment.year}"


def hour_label(moment: datetime) -> str:
    """`Nov 25 14:00` (UTC), the x-axis label of an hourly bucket."""
    return moment.astimezone(UTC).strftime("%b %d %H:00")
