"""Shared index store: publish immutable versions, pull verified copies, replicas share builds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_index import CountingHashEncoder  # same directory (pytest prepend import mode)
from store_helpers import add_entries

from database_tools.errors import IndexCorrupt
from database_tools.index_files import CURRENT_FILE, encoder_root, list_versions
from database_tools.index_store import (
    FILES_LIST,
    IndexStoreError,
    ensure_shared_index,
    latest_published,
    publish,
    pull,
)
from database_tools.store import Store

VOCAB = ["giant panda", "red panda", "bamboo", "zebra", "traffic light", "bicycle"]


@pytest.fixture()
def vocab(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def test_replicas_share_one_build_and_pick_up_updates(tmp_path: Path, vocab: Path) -> None:
    """Replica A builds and publishes; replica B (own local dir) pulls instead of building;
    after a database change A publishes an update that B pulls."""
    shared = tmp_path / "shared"
    shared.mkdir()
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    enc_a, enc_b = CountingHashEncoder(dim=16), CountingHashEncoder(dim=16)
    a = ensure_shared_index(store, enc_a, tmp_path / "a", shared, vocabulary=vocab)
    assert latest_published(shared, enc_a.encoder_id) == a.version
    b = ensure_shared_index(store, enc_b, tmp_path / "b", shared, vocabulary=vocab)
    assert b.version == a.version and enc_b.encoded == []  # pulled, not built
    assert str(b.path).startswith(str(tmp_path / "b"))  # served from B's own disk

    add_entries(store, "caption", ["a panda eating bamboo"], source="test")
    a2 = ensure_shared_index(store, enc_a, tmp_path / "a", shared, vocabulary=vocab)
    assert a2.version != a.version and latest_published(shared, enc_a.encoder_id) == a2.version
    b2 = ensure_shared_index(store, enc_b, tmp_path / "b", shared, vocabulary=vocab)
    assert b2.version == a2.version and enc_b.encoded == []
    assert b2.manifest.count == len(VOCAB) + 1
    store.close()


def test_pull_refuses_a_corrupt_copy_and_publish_refuses_rewrites(tmp_path: Path,
                                                                  vocab: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    enc = CountingHashEncoder(dim=16)
    built = ensure_shared_index(store, enc, tmp_path / "a", shared, vocabulary=vocab)
    published = encoder_root(shared, enc.encoder_id) / "versions" / built.version
    files = json.loads((published / FILES_LIST).read_text())
    assert {"index.faiss", "entries.arrow", "manifest.json"} <= set(files)

    index_file = published / "index.faiss"
    data = bytearray(index_file.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    index_file.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupt, match="sha256"):
        pull(shared, enc.encoder_id, tmp_path / "b")
    local = encoder_root(tmp_path / "b", enc.encoder_id)
    assert not (local / CURRENT_FILE).exists() and list_versions(local) == []  # nothing kept

    with pytest.raises(IndexStoreError, match="immutable"):
        publish(tmp_path / "a", enc.encoder_id, shared)  # same version, different bytes now
    with pytest.raises(IndexStoreError, match="not a directory"):
        pull(tmp_path / "missing", enc.encoder_id, tmp_path / "b")
    assert pull(shared, "other/encoder", tmp_path / "b") is None  # nothing published
    store.close()
