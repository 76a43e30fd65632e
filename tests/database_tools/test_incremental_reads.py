"""Incremental refreshes read the rows changed since a sequence number, not whole tables."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import event

from database_tools.curation import set_concept_status
from database_tools.exemplar_index import ExemplarIndex, ExemplarLimits, learn_exemplar
from store_helpers import add_entries, add_exemplar, get_entry


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
    return v / np.linalg.norm(v)


def test_entries_since_pages_in_sequence_order_and_filters_kinds(store):
    add_entries(store, "concept", [f"c{i}" for i in range(7)])
    first = store.db_version()
    add_entries(store, "caption", ["a caption"])
    add_entries(store, "concept", ["late one", "late two"])
    set_concept_status(store, ["c2"], "rejected")
    pages = list(store.entries_since(0, batch_size=3))
    changes = [c for page in pages for c in page]
    assert len(pages) >= 4 and all(len(p) <= 3 for p in pages)
    assert [(c.updated_seq, c.entry_id) for c in changes] == \
        sorted((c.updated_seq, c.entry_id) for c in changes)
    assert sorted(c.text for c in changes) == sorted(
        [f"c{i}" for i in range(7)] + ["a caption", "late one", "late two"])
    assert {c.text: c.status for c in changes}["c2"] == "rejected"
    since = [c.text for p in store.entries_since(first, kinds=("concept",), batch_size=1)
             for c in p]
    assert since == ["late one", "late two", "c2"]


def _plans(store, run) -> list[str]:
    """SQLite query plans of the SELECTs on entries/exemplars/aliases that ``run()`` executes."""
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and any(
                f"FROM {table}" in statement for table in ("entries", "exemplars", "aliases")):
            statements.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    with store.engine.connect() as conn:
        return [" / ".join(row[-1] for row in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + sql, params).all()) for sql, params in statements]


def test_a_refresh_after_a_new_exemplar_reads_through_the_sequence_indexes(store):
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL plans from its statistics; SQLite has none")
    add_entries(store, "concept", [f"word {i}" for i in range(50)])
    index = ExemplarIndex("clip/test")
    add_exemplar(store, "clip/test", "kitty", _unit(1), {})
    index.refresh(store)
    add_exemplar(store, "clip/test", "doggo", _unit(2), {})  # a new concept and its exemplar
    add_exemplar(store, "other/encoder", "doggo", _unit(3), {})
    plans = _plans(store, lambda: index.refresh(store))
    assert len(index) == 2
    assert index.match(np.stack([_unit(1), _unit(2)]), 0.99)[1].name == "doggo"
    assert any("ix_exemplars_served_seq" in p for p in plans)
    assert any("ix_entries_updated_seq" in p for p in plans)
    # no scan of every exemplar of the encoder or every concept to find the changed ones
    assert not [p for p in plans if "encoder_id=?" in p or "(kind=?)" in p], plans


def test_the_exemplar_cap_and_the_aliases_are_read_from_indexes(store):
    if store.dialect != "sqlite":
        pytest.skip("PostgreSQL plans from its statistics; SQLite has none")
    add_exemplar(store, "clip/test", "kitty", _unit(1), {})
    add_entries(store, "concept", ["doggo"])
    concept = get_entry(store, "concept", "doggo").id

    def learn() -> None:
        with store.write() as txn:
            learn_exemplar(txn, "clip/test", concept, _unit(2), {}, ExemplarLimits(total=10))
        store.load_aliases(min_count=3)

    plans = _plans(store, learn)
    assert any("COVERING INDEX ix_exemplars_encoder_removed" in p for p in plans), plans
    assert any("ix_aliases_count" in p for p in plans), plans
