"""Concept index: build, search, versions, atomic swap, refusal of bad indexes, updates."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from database_tools.index import ConceptIndex
from database_tools.index_build import build_index, update_index
from database_tools.errors import IndexCorrupt, IndexMismatch, IndexNotFound
from database_tools.index_files import CURRENT_FILE, INDEX_FILE, encoder_root, list_versions
from database_tools.store import Store
from store_helpers import add_entries, get_entry, latest_index_version


class CountingHashEncoder:
    """Deterministic test encoder: vectors seeded by sha256(text); counts every encoded text."""

    def __init__(self, dim: int = 16, encoder_id: str = "test/hash-16") -> None:
        self.dim = dim
        self.encoder_id = encoder_id
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded.extend(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = vec / np.linalg.norm(vec)
        return out


WORDS = [f"concept {i}" for i in range(300)]


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    add_entries(s, "concept", WORDS, source="test")
    add_entries(s, "caption", ["a dog on a red sofa", "two cats sleeping"], source="test")
    yield s
    s.close()


def _vector(encoder: CountingHashEncoder, text: str) -> np.ndarray:
    return CountingHashEncoder(encoder.dim, encoder.encoder_id).encode([text])


def test_build_and_search_exact(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    index = build_index(store, enc, tmp_path / "idx", progress=False)
    assert index.manifest.count == 302 and index.manifest.factory == "IDMap2,Flat"
    queries = np.vstack([_vector(enc, "concept 17"), _vector(enc, "two cats sleeping")])
    hits = index.search(queries, k=5)
    assert [len(h) for h in hits] == [5, 5]
    assert hits[0][0].text == "concept 17" and hits[0][0].kind == "concept"
    assert hits[1][0].text == "two cats sleeping" and hits[1][0].kind == "caption"
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0][0].score >= hits[0][1].score >= hits[0][4].score
    entry = get_entry(store, "concept", "concept 17")
    assert hits[0][0].entry_id == entry.id
    with_vectors = index.search(queries[:1], k=2, return_vectors=True)[0]
    np.testing.assert_allclose(with_vectors[0].vector, queries[0], atol=1e-6)
    assert hits[0][1].vector is None


def test_search_input_checks_and_small_index(store: Store, tmp_path: Path) -> None:
    index = build_index(store, CountingHashEncoder(), tmp_path / "idx", progress=False)
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((2, 3), np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones((1, 16), np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 16), np.nan, np.float32), 3)
    assert len(index.search(np.ones((1, 16), np.float32), 1000)[0]) == 302
    assert index.search(np.zeros((0, 16), np.float32), 3) == []


def test_layout_manifest_and_reopen(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    built = build_index(store, enc, tmp_path / "idx", progress=False)
    root = encoder_root(tmp_path / "idx", enc.encoder_id)
    assert (root / CURRENT_FILE).read_text().strip() == built.version
    manifest = json.loads((built.path / "manifest.json").read_text())
    for key in ("encoder_id", "dim", "metric", "normalised", "count", "snapshot_hash",
                "factory", "search_params", "created_at", "version", "index_sha256"):
        assert key in manifest
    assert manifest["snapshot_hash"] == store.snapshot_hash()
    reopened = ConceptIndex.open(tmp_path / "idx", enc.encoder_id)
    assert reopened.version == built.version
    assert latest_index_version(store, enc.encoder_id).version == built.version


def test_failed_build_keeps_previous_version(store: Store, tmp_path: Path, monkeypatch) -> None:
    enc = CountingHashEncoder()
    first = build_index(store, enc, tmp_path / "idx", progress=False)
    add_entries(store, "concept", ["giraffe"], source="test")
    import database_tools.index_build as build_mod

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(build_mod, "_write_version", boom)
    with pytest.raises(RuntimeError, match="killed"):
        build_index(store, enc, tmp_path / "idx", progress=False)
    root = encoder_root(tmp_path / "idx", enc.encoder_id)
    assert list_versions(root) == [first.version]
    assert not list((root / "versions").glob(".tmp-*"))
    again = ConceptIndex.open(tmp_path / "idx", enc.encoder_id)
    assert again.version == first.version and again.manifest.count == 302


def test_encoder_mismatch_and_missing(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    build_index(store, enc, tmp_path / "idx", progress=False)
    with pytest.raises(IndexNotFound, match="only holds indexes built with"):
        ConceptIndex.open(tmp_path / "idx", "open_clip/other")
    with pytest.raises(IndexNotFound):
        ConceptIndex.open(tmp_path / "empty", enc.encoder_id)
    with pytest.raises(IndexMismatch, match="dimension 16"):
        ConceptIndex.open(tmp_path / "idx", enc.encoder_id, expected_dim=512)
    # a directory copied under another encoder's name: the manifest is checked, not the path
    other = encoder_root(tmp_path / "idx", "open_clip/B")
    encoder_root(tmp_path / "idx", enc.encoder_id).rename(other)
    with pytest.raises(IndexMismatch, match="built with encoder test/hash-16, the configured "
                                            "encoder is open_clip/B; rebuild with tag-db"):
        ConceptIndex.open(tmp_path / "idx", "open_clip/B")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_index_refused(store: Store, tmp_path: Path, damage: str) -> None:
    enc = CountingHashEncoder()
    built = build_index(store, enc, tmp_path / "idx", progress=False)
    path = built.path / INDEX_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt):
        ConceptIndex.open(tmp_path / "idx", enc.encoder_id)


def test_unreadable_faiss_file_refused_without_checksum(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    built = build_index(store, enc, tmp_path / "idx", progress=False)
    path = built.path / INDEX_FILE
    path.write_bytes(b"\0" * path.stat().st_size)  # same size, garbage content
    with pytest.raises(IndexCorrupt, match="cannot be read by faiss"):
        ConceptIndex.open(tmp_path / "idx", enc.encoder_id, verify=False)


def test_incremental_update_adds_and_removes(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    first = build_index(store, enc, tmp_path / "idx", progress=False)
    assert update_index(store, enc, tmp_path / "idx", progress=False).version == first.version
    encoded_before = len(enc.encoded)
    add_entries(store, "concept", ["zebra crossing", "okapi"], source="test")
    from database_tools.curation import set_concept_status

    set_concept_status(store, ["concept 3"], "rejected")
    updated = update_index(store, enc, tmp_path / "idx", progress=False)
    assert updated.version != first.version and updated.manifest.parent_version == first.version
    assert updated.manifest.count == 302 + 2 - 1
    assert sorted(enc.encoded[encoded_before:]) == ["okapi", "zebra crossing"]
    root = encoder_root(tmp_path / "idx", enc.encoder_id)
    assert list_versions(root) == sorted([first.version, updated.version])
    hit = updated.search(_vector(enc, "okapi"), k=1)[0][0]
    assert hit.text == "okapi"
    hits = updated.search(_vector(enc, "concept 3"), k=303)[0]
    assert "concept 3" not in {h.text for h in hits}
    assert updated.manifest.snapshot_hash == store.snapshot_hash()


def test_versions_pruned(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    for i in range(4):
        add_entries(store, "concept", [f"extra {i}"], source="test")
        latest = build_index(store, enc, tmp_path / "idx", progress=False, keep=2)
    versions = list_versions(encoder_root(tmp_path / "idx", enc.encoder_id))
    assert len(versions) == 2 and versions[-1] == latest.version


def test_exclusion_list_for_index_without_remove(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    first = build_index(store, enc, tmp_path / "idx", factory="HNSW16", progress=False)
    from database_tools.curation import set_concept_status

    set_concept_status(store, ["concept 5"], "rejected")
    updated = update_index(store, enc, tmp_path / "idx", progress=False)
    assert updated.manifest.excluded == 1 and updated.version != first.version
    texts = {h.text for h in updated.search(_vector(enc, "concept 5"), k=10)[0]}
    assert "concept 5" not in texts and len(texts) == 10


def test_approximate_factory_through_the_store(store: Store, tmp_path: Path) -> None:
    """Training sample, nprobe tuning, mmapped IVF search/reconstruct and removal in updates."""
    enc = CountingHashEncoder()
    add_entries(store, "concept", [f"more {i}" for i in range(2700)], source="test")
    index = build_index(store, enc, tmp_path / "idx", factory="IVF32_HNSW32,SQ8", progress=False)
    manifest = index.manifest
    assert manifest.factory == "IVF32_HNSW32,SQ8" and manifest.count == 3002
    assert manifest.search_params["nprobe"] >= 1 and manifest.recall_at_10 >= 0.95
    query = _vector(enc, "more 42")
    hit = index.search(query, k=3, return_vectors=True)[0][0]
    assert hit.text == "more 42"
    assert float(hit.vector @ query[0]) > 0.99  # SQ8-decoded vector
    from database_tools.curation import set_concept_status

    set_concept_status(store, ["more 42"], "rejected")
    updated = update_index(store, enc, tmp_path / "idx", progress=False)
    assert updated.manifest.count == 3001 and updated.manifest.excluded == 0
    assert updated.manifest.search_params == manifest.search_params
    assert "more 42" not in {h.text for h in updated.search(query, k=5)[0]}


def test_encoder_failure_mid_add_keeps_previous_version(store: Store, tmp_path: Path) -> None:
    enc = CountingHashEncoder()
    first = build_index(store, enc, tmp_path / "idx", progress=False)
    add_entries(store, "caption", [f"new caption {i}" for i in range(50)], source="test")

    class Dying(CountingHashEncoder):
        def encode(self, texts: Sequence[str]) -> np.ndarray:
            if any(t.startswith("new caption") for t in texts):
                raise KeyboardInterrupt  # like a kill while adding
            return super().encode(texts)

    with pytest.raises(KeyboardInterrupt):
        build_index(store, Dying(), tmp_path / "idx", progress=False)
    root = encoder_root(tmp_path / "idx", enc.encoder_id)
    assert list_versions(root) == [first.version] and not list(root.glob("versions/.tmp-*"))
    assert ConceptIndex.open(tmp_path / "idx", enc.encoder_id).version == first.version


def test_policy_index_for_large_stores_through_the_store(store: Store, tmp_path: Path) -> None:
    """The >= EXACT_LIMIT policy (IVF + 4-bit fast-scan PQ + SQ8 re-ranking, IDMap2) end to end."""
    enc = CountingHashEncoder()
    factory = f"IVF32_HNSW32,PQ{enc.dim // 2}x4fs,Refine(SQ8)"
    add_entries(store, "concept", [f"more {i}" for i in range(2700)], source="test")
    index = build_index(store, enc, tmp_path / "idx", factory=factory, progress=False)
    manifest = index.manifest
    assert manifest.count == 3002 and manifest.recall_at_10 >= 0.95
    assert manifest.search_params["k_factor"] in (10, 20, 50, 100, 200)
    reopened = ConceptIndex.open(tmp_path / "idx", enc.encoder_id)
    query = _vector(enc, "more 42")
    hit = reopened.search(query, k=3, return_vectors=True)[0][0]
    assert hit.text == "more 42" and float(hit.vector @ query[0]) > 0.99
    from database_tools.curation import set_concept_status

    set_concept_status(store, ["more 42"], "rejected")
    add_entries(store, "concept", ["brand new concept"], source="test")
    updated = update_index(store, enc, tmp_path / "idx", progress=False)
    assert "more 42" not in {h.text for h in updated.search(query, k=5)[0]}
    new = updated.search(_vector(enc, "brand new concept"), k=1)[0][0]
    assert new.text == "brand new concept"
