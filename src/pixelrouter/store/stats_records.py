"""Provider outcomes for the statistics: one row per provider attempt, written once when a
generation ends, and the same outcomes summed per minute in the same transaction; read back as
window counts and hourly buckets (from the minutes), latency samples (from the rows); and the
apps ranking from the generation records."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite

from pixelrouter.store.db import write_transaction
from pixelrouter.store.tables import (
    generations,
    provider_outcome_minutes,
    provider_outcomes,
    reservations,
)

_out = provider_outcomes.c
_min = provider_outcome_minutes.c
_gen = generations.c


@dataclass(frozen=True)
class ProviderOutcome:
    """One provider attempt as the statistics count it."""

    provider_slug: str
    provider_name: str
    model: str
    created_at: datetime  # tz-aware UTC: when the attempt ended
    status: int  # 200, or the attempt's HTTP-like error status
    provider_caused: bool  # counts against the provider's uptime
    latency_ms: int  # the whole attempt
    images: int = 0  # delivered
    image_tokens: int = 0  # delivered completion tokens


@dataclass(frozen=True)
class OutcomeCounts:
    """Outcomes of one provider in one window."""

    successes: int = 0
    errors: int = 0  # provider-caused failures
    excluded: int = 0  # rate limits and client errors: not counted in uptime


class SuccessSample(NamedTuple):
    """What one successful attempt tells about latency and throughput."""

    latency_ms: int
    images: int
    image_tokens: int


@dataclass(frozen=True)
class AppUsage:
    """Succeeded generations of one (referer, title) pair in a period."""

    http_referer: str | None
    app_title: str | None
    requests: int
    image_tokens: int


class StatsRecords:
    """Statistics methods of `Store`."""

    engine: Engine

    def record_outcomes(
        self, outcomes: Sequence[ProviderOutcome], tx: Connection | None = None
    ) -> None:
        """Insert the attempts of one generation and add them to their minutes, in one
        transaction."""
        if not outcomes:
            return
        with write_transaction(self.engine, tx) as conn:
            conn.execute(insert(provider_outcomes), outcome_rows(outcomes))
            dialect = "postgresql" if conn.dialect.name == "postgresql" else "sqlite"
            conn.execute(_ADD_TO_MINUTES[dialect], minute_rows(outcomes))

    def outcome_counts(
        self,
        slug: str,
        now: datetime,
        windows: Mapping[str, timedelta],
        *,
        model: str | None = None,
    ) -> dict[str, OutcomeCounts]:
        """Successes, provider-caused errors and excluded outcomes of one provider in each
        window, counted in whole minutes: those that start in (now - span, now]."""
        with self.engine.connect() as conn:
            return _counts(conn, [slug], now, windows, model)[slug]

    def success_samples(
        self,
        slug: str,
        since: datetime,
        until: datetime,
        *,
        model: str | None = None,
        limit: int = 10_000,
    ) -> list[SuccessSample]:
        """The newest `limit` successful attempts in (since, until] that delivered images."""
        with self.engine.connect() as conn:
            return _samples(conn, slug, since, until, model, limit)

    def provider_figures(
        self,
        slugs: Sequence[str],
        now: datetime,
        windows: Mapping[str, timedelta],
        *,
        samples_since: datetime,
        model: str | None = None,
        limit: int = 10_000,
    ) -> dict[str, tuple[dict[str, OutcomeCounts], list[SuccessSample]]]:
        """`outcome_counts` and `success_samples` (up to `now`) of several providers on one
        connection: one statement for every provider's counts, one per provider's samples."""
        with self.engine.connect() as conn:
            counts = _counts(conn, slugs, now, windows, model)
            return {
                slug: (counts[slug], _samples(conn, slug, samples_since, now, model, limit))
                for slug in slugs
            }

    def outcome_counts_by_hour(
        self, slug: str, since: datetime, until: datetime, *, model: str | None = None
    ) -> dict[datetime, OutcomeCounts]:
        """Outcome counts of one provider per UTC hour (keyed by the hour's start), from the
        minutes that start in [since, until]."""
        hour = _utc_hour(self.engine.dialect.name)
        stmt = (
            select(hour, _sum(_min.successes), _sum(_min.errors), _sum(_min.excluded))
            .where(
                _min.provider_slug == slug,
                _min.minute >= since,
                _min.minute <= until,
            )
            .group_by(hour)
        )
        if model is not None:
            stmt = stmt.where(_min.model == model)
        with self.engine.connect() as conn:
            return {
                _as_hour(value): OutcomeCounts(int(ok), int(errors), int(excluded))
                for value, ok, errors, excluded in conn.execute(stmt)
            }

    def prune_outcomes(self, before: datetime) -> int:
        """Delete outcomes (and their minutes) older than `before`; the statistics look back
        3 days at most. Returns how many outcome rows went."""
        with write_transaction(self.engine) as conn:
            old_minutes = _min.minute < minute_start(before)
            conn.execute(delete(provider_outcome_minutes).where(old_minutes))
            return conn.execute(delete(provider_outcomes).where(_out.created_at < before)).rowcount

    def app_usage(
        self, since: datetime, until: datetime, *, model: str | None = None
    ) -> list[AppUsage]:
        """Succeeded generations created in [since, until] per (HTTP-Referer, title) pair."""
        stmt = (
            select(
                _gen.http_referer,
                _gen.app_title,
                func.count(),
                cast(
                    func.coalesce(func.sum(func.coalesce(_gen.tokens_completion, 0)), 0), BigInteger
                ),
            )
            .where(
                _gen.state == "succeeded",
                _gen.created_at >= since,
                _gen.created_at <= until,
            )
            .group_by(_gen.http_referer, _gen.app_title)
        )
        if model is not None:
            stmt = stmt.where(_gen.model == model)
        with self.engine.connect() as conn:
            return [
                AppUsage(referer, title, int(requests), int(tokens))
                for referer, title, requests, tokens in conn.execute(stmt)
            ]

    def count_open_reservations(self) -> int:
        """Reservations neither settled nor released yet (a gauge for /metrics)."""
        stmt = select(func.count()).select_from(reservations).where(reservations.c.state == "open")
        with self.engine.connect() as conn:
            return int(conn.scalar(stmt) or 0)


# The statements behind every endpoint's figures are built once with bound parameters, so a
# call only binds values (building a statement costs more than running it here).


def _counts(
    conn: Connection,
    slugs: Sequence[str],
    now: datetime,
    windows: Mapping[str, timedelta],
    model: str | None,
) -> dict[str, dict[str, OutcomeCounts]]:
    params: dict[str, Any] = {"slugs": list(slugs), "model": model, "now": now}
    params.update({f"since_{i}": now - span for i, span in enumerate(windows.values())})
    found: dict[tuple[str, int], OutcomeCounts] = {}
    for i, slug, ok, errors, excluded in conn.execute(
        _counts_statement(len(windows), model is not None), params
    ):
        found[(slug, int(i))] = OutcomeCounts(int(ok), int(errors), int(excluded))
    return {
        slug: {name: found.get((slug, i), OutcomeCounts()) for i, name in enumerate(windows)}
        for slug in slugs
    }


def _samples(
    conn: Connection,
    slug: str,
    since: datetime,
    until: datetime,
    model: str | None,
    limit: int,
) -> list[SuccessSample]:
    params = {"slug": slug, "model": model, "since": since, "until": until, "limit": limit}
    rows = conn.execute(_samples_statement(model is not None), params).all()
    return [SuccessSample(*row) for row in rows]


@functools.cache
def _counts_statement(windows: int, by_model: bool) -> Any:
    parts = []
    for i in range(windows):
        part = (
            select(
                literal_column(str(i)),
                _min.provider_slug,
                _sum(_min.successes),
                _sum(_min.errors),
                _sum(_min.excluded),
            )
            .where(
                _min.provider_slug.in_(bindparam("slugs", expanding=True)),
                _min.minute > bindparam(f"since_{i}"),
                _min.minute <= bindparam("now"),
            )
            .group_by(_min.provider_slug)
        )
        if by_model:
            part = part.where(_min.model == bindparam("model"))
        parts.append(part)
    return union_all(*parts)


@functools.cache
def _samples_statement(by_model: bool) -> Any:
    stmt = (
        select(_out.latency_ms, _out.images, _out.image_tokens)
        .where(
            _out.provider_slug == bindparam("slug"),
            _out.created_at > bindparam("since"),
            _out.created_at <= bindparam("until"),
            _out.status.between(200, 299),
            _out.images > 0,
        )
        .order_by(_out.created_at.desc())
        .limit(bindparam("limit"))
    )
    if by_model:
        stmt = stmt.where(_out.model == bindparam("model"))
    return stmt


def minute_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def outcome_kind(outcome: ProviderOutcome) -> int:
    """0 success, 1 provider-caused error, 2 excluded (rate limit, client error)."""
    if 200 <= outcome.status < 300:
        return 0
    return 1 if outcome.provider_caused else 2


def outcome_rows(outcomes: Sequence[ProviderOutcome]) -> list[dict[str, Any]]:
    """The `provider_outcomes` rows of these attempts."""
    return [
        {
            "provider_slug": o.provider_slug,
            "provider_name": o.provider_name,
            "model": o.model,
            "created_at": o.created_at,
            "status": o.status,
            "provider_caused": o.provider_caused,
            "latency_ms": max(0, int(o.latency_ms)),
            "images": o.images,
            "image_tokens": o.image_tokens,
        }
        for o in outcomes
    ]


def minute_rows(outcomes: Sequence[ProviderOutcome]) -> list[dict[str, Any]]:
    """What these attempts add to `provider_outcome_minutes`, one row per provider, model and
    minute, in key order (concurrent writers lock the rows they share in the same order)."""
    totals: dict[tuple[str, str, datetime], list[int]] = {}
    for o in outcomes:
        key = (o.provider_slug, o.model, minute_start(o.created_at))
        totals.setdefault(key, [0, 0, 0])[outcome_kind(o)] += 1
    return [
        {
            "provider_slug": slug,
            "model": model,
            "minute": minute,
            "successes": ok,
            "errors": errors,
            "excluded": excluded,
        }
        for (slug, model, minute), (ok, errors, excluded) in sorted(totals.items())
    ]


def _minutes_upsert(dialect: Any) -> Any:
    stmt = dialect.insert(provider_outcome_minutes)
    return stmt.on_conflict_do_update(
        index_elements=[_min.provider_slug, _min.model, _min.minute],
        set_={
            "successes": _min.successes + stmt.excluded.successes,
            "errors": _min.errors + stmt.excluded.errors,
            "excluded": _min.excluded + stmt.excluded.excluded,
        },
    )


# Built once per dialect, not on every write (its construction cost more than running it).
_ADD_TO_MINUTES = {"postgresql": _minutes_upsert(postgresql), "sqlite": _minutes_upsert(sqlite)}


def _sum(column: Any) -> Any:
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def _utc_hour(dialect: str) -> Any:
    """The UTC hour a minute row falls in (SQLite stores naive UTC text)."""
    if dialect == "postgresql":
        # Literals, not parameters: GROUP BY must repeat the selected expression exactly.
        return func.date_trunc(
            literal_column("'hour'"), func.timezone(literal_column("'UTC'"), _min.minute)
        )
    return func.strftime(literal_column("'%Y-%m-%d %H:00:00'"), _min.minute)


def _as_hour(value: datetime | str) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
