"""Migration 0005: a generation's LoRA adapters; rows from before it read as made without any."""

from __future__ import annotations

from sqlalchemy import inspect

from pixelrouter.store import NewGeneration, Store
from pixelrouter.store.migrate import current_revision, upgrade


def test_generations_from_before_the_column_have_no_adapters(db_url: str) -> None:
    with Store(db_url) as store:
        upgrade(store.engine, "0004")
        assert "loras" not in {c["name"] for c in inspect(store.engine).get_columns("generations")}
        store.start_generation(NewGeneration(id="gen-old", model="m", api="images"))
        store.finish_generation("gen-old", state="succeeded", total_cost_micro=14_000)

        upgrade(store.engine, "0005")
        assert current_revision(store.engine) == "0005"
        column = {c["name"]: c for c in inspect(store.engine).get_columns("generations")}["loras"]
        assert column["nullable"]
        old = store.get_generation("gen-old")
        assert old is not None and old.loras == () and old.total_cost_micro == 14_000
        store.start_generation(
            NewGeneration(
                id="gen-new", model="m", api="images", loras=({"name": "ink", "scale": 1.0},)
            )
        )
        new = store.get_generation("gen-new")
        assert new is not None and new.loras == ({"name": "ink", "scale": 1.0},)
