"""Store: migrations, versions, entry iteration, exemplars, errors, concurrent writers."""
from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from database_tools.errors import SchemaTooNew, StoreUnavailable
from database_tools.migrate import head_revision
from database_tools.schema import Base
from database_tools.store import Store
from store_helpers import add_entries, add_exemplar, get_entry, latest_index_version


def test_migration_from_empty_db_matches_models(store):
    """The migrations create exactly the store's models (and no table of another package)."""
    with store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    assert store.db_version() == 0


def test_reopen_does_not_remigrate_or_lose_data(db_url):
    with Store(db_url) as s:
        add_entries(s, "concept", ["dog"])
    with Store(db_url) as s:
        assert [t for b in s.iter_entries() for _, _, t in b] == ["dog"]
        assert s.db_version() == 1


def test_newer_schema_is_refused(db_url):
    with Store(db_url) as s, s.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(SchemaTooNew, match="newer than this code"):
        Store(db_url)


def test_unreachable_postgres_url_is_a_clear_error_without_password():
    with pytest.raises(StoreUnavailable) as info:
        Store("postgresql://alice:s3cret-pw@127.0.0.1:1/concepts")
    message = str(info.value)
    assert message.startswith("cannot connect to postgresql+psycopg://alice:***@127.0.0.1:1/")
    assert "s3cret-pw" not in message


def test_unopenable_sqlite_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable, match="cannot connect to sqlite"):
        Store(f"sqlite:///{blocker}/sub/store.db")


def test_entries_are_unique_per_kind_and_normalised(store):
    add_entries(store, "concept", ["Golden  Retriever", "golden retriever.", "cat"])
    add_entries(store, "caption", ["A Dog runs.", "a dog runs."])
    add_entries(store, "caption", ["cat"])
    rows = [r for b in store.iter_entries(batch_size=2) for r in b]
    assert [(k, t) for _, k, t in rows] == [
        ("concept", "cat"), ("concept", "golden retriever"), ("caption", "A Dog runs."),
        ("caption", "cat")]
    assert get_entry(store, "concept", "GOLDEN retriever").support == 2
    assert get_entry(store, "caption", "a dog runs.").support == 2


def test_iter_entries_batches_and_filters(store):
    add_entries(store, "concept", [f"c{i}" for i in range(25)])
    add_entries(store, "caption", ["x y"], status="pending")
    batches = list(store.iter_entries(kinds=("concept",), batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 5]
    assert store.count_entries(("caption",), ("pending",)) == 1
    assert list(store.iter_entries(kinds=("caption",))) == []
    with pytest.raises(ValueError):
        next(store.iter_entries(batch_size=0))


def test_db_version_snapshot_and_changes(store):
    empty_hash = store.snapshot_hash()
    add_entries(store, "concept", ["dog", "cat"])
    v1, h1 = store.db_version(), store.snapshot_hash()
    assert v1 == 1 and h1 != empty_hash
    add_entries(store, "concept", ["dog"])  # support only: version bumps, snapshot stays
    assert store.db_version() == 2 and store.snapshot_hash() == h1
    assert [c.text for b in store.entries_since(v1) for c in b] == []
    add_entries(store, "concept", ["bird"])
    changes = [c for b in store.entries_since(v1) for c in b]
    assert [(c.text, c.status) for c in changes] == [("bird", "active")]
    assert store.snapshot_hash() != h1


def test_exemplars_roundtrip_and_encoder_separation(store):
    vec = np.arange(8, dtype=np.float32)
    add_exemplar(store, "enc-a", "Dog", vec, {"task": 1})
    add_exemplar(store, "enc-a", "cat", vec + 1, {"task": 2})
    add_exemplar(store, "enc-b", "dog", np.ones(4), {})
    names, emb = store.load_exemplars("enc-a")
    assert names == ["dog", "cat"] and emb.dtype == np.float32 and emb.shape == (2, 8)
    np.testing.assert_array_equal(emb[0], vec)
    assert store.load_exemplars("enc-b")[1].shape == (1, 4)
    assert store.load_exemplars("none") == ([], pytest.approx(np.zeros((0, 0))))
    with pytest.raises(ValueError):
        add_exemplar(store, "enc-a", "dog", np.array([np.nan, 1.0]), {})


def test_record_index_version(store):
    add_entries(store, "concept", ["dog"])
    vid = store.record_index_version("enc", "v1", path="/x", snapshot_hash=store.snapshot_hash(),
                                     db_version=store.db_version(), count=1, manifest={"a": 1})
    latest = latest_index_version(store, "enc")
    assert latest.id == vid and latest.count == 1 and latest.version == "v1"
    assert store.db_version() == 1  # recording an index is not a content change


def _ingest(url: str, prefix: str, n: int) -> None:
    with Store(url) as s:
        for i in range(n):
            add_entries(s, "concept", [f"{prefix}{i}", "shared"])


def test_concurrent_writers_threads(store):
    threads = [threading.Thread(target=_ingest, args=(store.url, p, 15)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count_entries() == 31
    assert get_entry(store, "concept", "shared").support == 30
    assert store.db_version() == 30


def test_concurrent_writers_processes(store):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_ingest, args=(store.url, p, 10)) for p in "xy"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert get_entry(store, "concept", "shared").support == 20
    assert store.count_entries() == 21


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path):
    with Store(f"sqlite:///{tmp_path / 's.db'}") as s:
        add_entries(s, "concept", ["dog"])
        with s.write() as txn:  # an open write transaction holds SQLite's write lock
            txn.seq()
            assert Store(s.url).db_version() == 1  # a reader sees the committed version at once
        assert s.db_version() == 2


def test_concurrent_first_open_migrates_once(db_url):
    errors: list[BaseException] = []

    def open_store():
        try:
            Store(db_url).close()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store(db_url) as s:
        assert s.db_version() == 0


def test_a_database_at_the_first_schema_is_upgraded_on_open(db_url):
    """Databases created by an older release (schema 0001) are upgraded to the head revision."""
    from alembic import command
    from sqlalchemy import create_engine

    from database_tools.migrate import alembic_config

    engine = create_engine(db_url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with Store(db_url) as store, store.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
