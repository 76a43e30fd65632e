"""Curation (approve/reject/merge/rename) and export/import bundles."""
from __future__ import annotations

import json

import numpy as np
import pytest

from database_tools.bundle import export_bundle, import_bundle
from database_tools.corrections import record_annotation
from database_tools.curation import (
    list_concepts,
    merge_concepts,
    rename_concept,
    set_concept_status,
    stats,
)
from database_tools.errors import BundleError, ConceptNotFound
from database_tools.schema import Alias, Entry, Exemplar
from database_tools.store import Store
from store_helpers import add_entries, add_exemplar, get_entry


def test_approve_reject(store):
    add_entries(store, "concept", ["dog", "cat"], status="pending")
    assert [e.text for e in list_concepts(store, status="pending")] == ["cat", "dog"]
    assert set_concept_status(store, ["dog"], "active") == 1
    assert set_concept_status(store, ["cat"], "rejected") == 1
    assert [t for b in store.iter_entries() for _, _, t in b] == ["dog"]
    with pytest.raises(ConceptNotFound):
        set_concept_status(store, ["dog", "unicorn"], "rejected")
    assert get_entry(store, "concept", "dog").status == "active"  # all or nothing


def test_merge_moves_support_aliases_exemplars(store):
    add_entries(store, "concept", ["puppy", "puppy", "dog", "doggo"])
    add_exemplar(store, "enc", "puppy", np.ones(4), {})
    merged = merge_concepts(store, ["puppy", "doggo"], "dog")
    assert merged == 2
    dog = get_entry(store, "concept", "dog")
    assert dog.support == 4 and get_entry(store, "concept", "puppy").status == "merged"
    assert store.load_exemplars("enc")[0] == ["dog"]
    assert stats(store).most_corrected == [("dog", 2)] and stats(store).aliases == 2
    with pytest.raises(ConceptNotFound):
        merge_concepts(store, ["puppy"], "dog")


def test_rename_in_place_and_into_existing(store):
    add_entries(store, "concept", ["colour tv", "television"])
    add_exemplar(store, "enc", "colour tv", np.ones(4), {})
    before = store.db_version()
    assert rename_concept(store, "colour tv", "Color TV") == "color tv"
    changes = [c for b in store.entries_since(before) for c in b]
    assert [(c.text, c.status) for c in changes] == [("color tv", "active")]
    assert store.load_exemplars("enc")[0] == ["color tv"]
    assert rename_concept(store, "color tv", "television") == "television"
    assert get_entry(store, "concept", "television").support == 2
    assert store.load_exemplars("enc")[0] == ["television"]


def _content(store: Store) -> dict:
    """Everything a bundle carries, independent of row ids."""
    with store.read() as s:
        norm_of = {e.id: (e.kind, e.norm) for e in s.query(Entry)}
        entries = sorted((e.kind, e.text, e.norm, e.status, e.support, e.source,
                          norm_of.get(e.merged_into_id)) for e in s.query(Entry))
        aliases = sorted((a.norm, a.text, norm_of[a.entry_id], a.count) for a in s.query(Alias))
        exemplars = sorted((x.encoder_id, norm_of[x.entry_id], x.dim, bytes(x.vector),
                            x.provenance) for x in s.query(Exemplar))
    return {"entries": entries, "aliases": aliases, "exemplars": exemplars}


def _populate(store: Store) -> None:
    add_entries(store, "caption", ["A dog on a beach", "a cat"])
    add_entries(store, "concept", ["dog", "puppy", "sofa"])
    add_exemplar(store, "enc", "dog", np.arange(4, dtype=np.float32), {"task": 1})
    record_annotation(store, {"id": 1, "updated_at": "t1", "result": [
        {"id": "r", "type": "brushlabels", "value": {"rle": [1], "brushlabels": ["couch"]}}]},
        prediction=[{"id": "r", "type": "brushlabels", "value": {"rle": [1],
                                                                  "brushlabels": ["sofa"]}}])
    merge_concepts(store, ["puppy"], "dog")
    set_concept_status(store, ["sofa"], "rejected")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_round_trip_into_empty_store_is_identical(store, tmp_path, fmt):
    _populate(store)
    report = export_bundle(store, tmp_path / "b", fmt=fmt)
    assert (report.entries, report.aliases, report.exemplars) == (6, 2, 1)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["counts"] == {"entries": 6, "aliases": 2, "exemplars": 1}
    assert manifest["exemplar_encoder_ids"] == ["enc"]
    target = Store(f"sqlite:///{tmp_path / 'target.db'}")
    import_bundle(target, tmp_path / "b")
    assert _content(target) == _content(store)
    assert import_bundle(target, tmp_path / "b").already_imported
    assert _content(target) == _content(store)


def test_import_merges_without_duplicates(store, tmp_path):
    _populate(store)
    export_bundle(store, tmp_path / "b", fmt="jsonl")
    other = Store(f"sqlite:///{tmp_path / 'other.db'}")
    add_entries(other, "concept", ["dog", "zebra"])
    add_exemplar(other, "enc", "dog", np.arange(4, dtype=np.float32), {"task": 1})
    import_bundle(other, tmp_path / "b")
    assert get_entry(other, "concept", "dog").support == 3
    assert get_entry(other, "concept", "zebra").support == 1
    assert len(other.load_exemplars("enc")[0]) == 1


def test_corrupt_truncated_or_foreign_bundles_are_refused(store, tmp_path):
    _populate(store)
    export_bundle(store, tmp_path / "b", fmt="jsonl")
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(store, tmp_path / "b")
    target = Store(f"sqlite:///{tmp_path / 't.db'}")
    entries = tmp_path / "b" / "entries.jsonl"
    good = entries.read_bytes()
    entries.write_bytes(good[: len(good) // 2])
    with pytest.raises(BundleError, match="checksum mismatch"):
        import_bundle(target, tmp_path / "b")
    entries.write_bytes(good)
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["schema_version"] = "9999_future"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unknown schema version"):
        import_bundle(target, tmp_path / "b")
    # checksums that match but a row that is broken: nothing half-written
    manifest["schema_version"] = json.loads(manifest_path.read_text())["schema_version"]
    from database_tools.bundle_io import sha256_file
    from database_tools.migrate import head_revision

    manifest["schema_version"] = head_revision()
    aliases = tmp_path / "b" / "aliases.jsonl"
    aliases.write_text('{"text": "x", "norm": "x", "entry_id": 99999, "count": 1}\n')
    manifest["files"]["aliases"]["sha256"] = sha256_file(aliases)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="unknown entry"):
        import_bundle(target, tmp_path / "b")
    assert target.count_entries(statuses=("active", "pending", "rejected", "merged")) == 0
    assert target.db_version() == 0
    with pytest.raises(BundleError, match="no manifest"):
        import_bundle(target, tmp_path)
