"""Activity: succeeded generations summed per UTC day, model and provider (GET /activity)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import BigInteger, Date, Engine, case, cast, func, literal_column, or_, select

from pixelrouter.catalog import PIXELS_PER_MP
from pixelrouter.store.records import ActivityRow
from pixelrouter.store.tables import generations

_gen = generations.c


class ActivityRecords:
    """Activity method of `Store`."""

    engine: Engine

    def activity(
        self, *, since: date, until: date | None = None, key_hash: str | None = None
    ) -> list[ActivityRow]:
        """Succeeded generations created from `since` through `until` (UTC days, both included;
        None: up to now), of one key or all, per day, model and provider."""
        day = _utc_day(self.engine.dialect.name)
        pixels = _gen.width * _gen.height
        # billable megapixels of one image: max(1, ceil(w*h / 2**20)); unknown size counts 1
        per_image = case(
            (or_(_gen.width.is_(None), _gen.height.is_(None), pixels <= PIXELS_PER_MP), 1),
            else_=(pixels + (PIXELS_PER_MP - 1)) // PIXELS_PER_MP,
        )
        stmt = (
            select(
                day,
                _gen.model,
                _gen.provider_name,
                func.count(),
                _sum(_gen.num_images),
                _sum(per_image * _gen.num_images),
                _sum(func.coalesce(_gen.tokens_prompt, 0)),
                _sum(func.coalesce(_gen.tokens_completion, 0)),
                _sum(_gen.total_cost_micro),
            )
            .where(_gen.state == "succeeded", _gen.created_at >= _midnight(since))
            .group_by(day, _gen.model, _gen.provider_name)
        )
        if until is not None:
            stmt = stmt.where(_gen.created_at < _midnight(until + timedelta(days=1)))
        if key_hash is not None:
            stmt = stmt.where(_gen.key_hash == key_hash)
        with self.engine.connect() as conn:
            rows = [
                ActivityRow(
                    date=value if isinstance(value, date) else date.fromisoformat(value),
                    model=model,
                    provider_name=provider_name,
                    requests=int(requests),
                    images=int(images),
                    megapixels=int(megapixels),
                    prompt_tokens=int(prompt_tokens),
                    completion_tokens=int(completion_tokens),
                    usage_micro=int(usage),
                )
                for (
                    value,
                    model,
                    provider_name,
                    requests,
                    images,
                    megapixels,
                    prompt_tokens,
                    completion_tokens,
                    usage,
                ) in conn.execute(stmt)
            ]
        return sorted(rows, key=lambda r: (r.date, r.model, r.provider_name or ""))


def _utc_day(dialect: str) -> Any:
    """The UTC calendar day of `created_at` (SQLite stores naive UTC text)."""
    if dialect == "postgresql":
        # A literal, not a parameter: GROUP BY must repeat the selected expression exactly.
        return func.date(func.timezone(literal_column("'UTC'"), _gen.created_at), type_=Date)
    return func.date(_gen.created_at, type_=Date)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _sum(column: Any) -> Any:
    return cast(func.coalesce(func.sum(column), 0), BigInteger)
