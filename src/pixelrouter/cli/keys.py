"""`pixelrouter keys`: API keys in the server's database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pixelrouter.catalog import usd_to_micro

from .common import ConfigOption, DbOption, console, keys_app, settings_from


def _store(db: str | None, config: Path | None):
    from pixelrouter.store import Store

    settings = settings_from(config, database_url=db)
    store = Store(settings.resolved_database_url)
    store.migrate()
    return store


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by")] = "default",
    limit: Annotated[float | None, typer.Option(min=0, max=1e9, help="Credit limit in USD")] = None,
    reset: Annotated[str | None, typer.Option(help="Limit reset: daily, weekly or monthly")] = None,
    management: Annotated[
        bool, typer.Option("--management", help="A management key (manages keys)")
    ] = False,
    rate_limit: Annotated[
        str | None,
        typer.Option(help="Generation requests per interval, e.g. 60/60s (default: server's)"),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once."""
    requests, interval = _parse_rate_limit(rate_limit)
    if reset is not None and reset not in ("daily", "weekly", "monthly"):
        raise typer.BadParameter("--reset must be daily, weekly or monthly")
    with _store(db, config) as store:
        record, plaintext = store.create_key(
            name=name,
            kind="management" if management else "inference",
            limit_micro=None if limit is None else usd_to_micro(limit),
            limit_reset=reset,
            rate_limit_requests=requests,
            rate_limit_interval_s=interval,
        )
    console.print(f"created {record.kind} key {record.label} (hash {record.hash})")
    console.print("The key is shown only now:")
    print(plaintext)


def _parse_rate_limit(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    count, _, interval = text.partition("/")
    try:
        requests, seconds = int(count), int(interval.removesuffix("s") or 60)
    except ValueError:
        requests = seconds = 0
    if requests < 1 or seconds < 1:
        raise typer.BadParameter("--rate-limit looks like 60/60s (requests/seconds, both ≥ 1)")
    return requests, seconds


def _find_one(store: Any, key_hash: str) -> Any:
    matches = [r for r in store.list_keys() if r.hash.startswith(key_hash)]
    if len(matches) != 1:
        console.print(f"[red]error:[/] {len(matches)} keys match {key_hash!r}")
        raise typer.Exit(1)
    return matches[0]


@keys_app.command("usage")
def keys_usage(
    key_hash: Annotated[str, typer.Argument(help="The key's hash, or a unique prefix of it")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """A key's spend: all time, today, this week, this month, and what is left."""
    from pixelrouter.catalog import micro_to_usd

    with _store(db, config) as store:
        record = _find_one(store, key_hash)
        usage = store.key_usage(record.hash)
        balance = store.key_balance(record.hash)
    remaining = balance.remaining(record.limit_micro)
    rows = {
        "key": f"{record.label} ({record.name})",
        "usage": f"${micro_to_usd(usage.total):.6f}",
        "today": f"${micro_to_usd(usage.daily):.6f}",
        "this week": f"${micro_to_usd(usage.weekly):.6f}",
        "this month": f"${micro_to_usd(usage.monthly):.6f}",
        "reserved now": f"${micro_to_usd(balance.reserved):.6f}",
        "limit": "none"
        if record.limit_micro is None
        else f"${micro_to_usd(record.limit_micro):.6f} {record.limit_reset or 'in all'}",
        "remaining": "no limit" if remaining is None else f"${micro_to_usd(remaining):.6f}",
    }
    for name, value in rows.items():
        print(f"{name:>13}: {value}")


@keys_app.command("list")
def keys_list(db: DbOption = None, config: ConfigOption = None) -> None:
    """List keys (labels and hashes, never the keys)."""
    from pixelrouter.catalog import micro_to_usd

    with _store(db, config) as store:
        table = Table("hash", "name", "label", "kind", "disabled", "limit", "usage")
        for record in store.list_keys():
            usage = store.key_usage(record.hash)
            limit = "-" if record.limit_micro is None else f"${micro_to_usd(record.limit_micro)}"
            table.add_row(
                record.hash[:16],
                record.name,
                record.label,
                record.kind,
                "yes" if record.disabled else "no",
                limit + (f" {record.limit_reset}" if record.limit_reset else ""),
                f"${micro_to_usd(usage.total):.6f}",
            )
    Console().print(table)


@keys_app.command("disable")
def keys_disable(
    key_hash: Annotated[str, typer.Argument(help="The key's hash, or a unique prefix of it")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Disable a key: it answers 401 from now on."""
    from pixelrouter.errors import LastManagementKey

    with _store(db, config) as store:
        record = _find_one(store, key_hash)
        try:
            store.update_key(record.hash, disabled=True)
        except LastManagementKey as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    console.print(f"disabled {record.label}")
