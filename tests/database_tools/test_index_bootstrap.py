"""ensure_index: default vocabulary import, first build, reuse, incremental update, concurrency."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_index import CountingHashEncoder  # same directory (pytest prepend import mode)

from database_tools.bootstrap import DEFAULT_VOCABULARY, ensure_index
from database_tools.index_files import encoder_root, list_versions
from database_tools.store import Store
from store_helpers import add_entries, get_entry

VOCAB = [line for line in DEFAULT_VOCABULARY.read_text(encoding="utf-8").splitlines() if line]


def test_first_use_imports_vocabulary_and_builds(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    enc = CountingHashEncoder(dim=24, encoder_id="test/hash-24")
    index = ensure_index(store, enc, tmp_path / "idx")
    assert index.manifest.count == len(VOCAB) == store.count_entries(("concept",))
    assert get_entry(store, "concept", "aerosol can").source == "default-vocabulary:concepts.txt"
    hit = index.search(CountingHashEncoder(24).encode(["giant panda"]), k=1)[0][0]
    assert hit.text == "giant panda" and hit.kind == "concept"
    encoded = len(enc.encoded)
    again = ensure_index(store, enc, tmp_path / "idx")
    assert again.version == index.version and len(enc.encoded) == encoded
    add_entries(store, "caption", ["a panda eating bamboo"], source="test")
    updated = ensure_index(store, enc, tmp_path / "idx")
    assert updated.version != index.version and updated.manifest.count == len(VOCAB) + 1
    assert enc.encoded[encoded:] == ["a panda eating bamboo"]
    assert len(list_versions(encoder_root(tmp_path / "idx", enc.encoder_id))) == 2
    store.close()


def test_rejected_default_concept_stays_rejected(tmp_path: Path) -> None:
    from database_tools.curation import set_concept_status

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    enc = CountingHashEncoder()
    ensure_index(store, enc, tmp_path / "idx")
    set_concept_status(store, ["giant panda"], "rejected")
    index = ensure_index(store, enc, tmp_path / "idx")
    hits = index.search(CountingHashEncoder().encode(["giant panda"]), k=3)[0]
    assert "giant panda" not in {h.text for h in hits}
    other = ensure_index(store, CountingHashEncoder(encoder_id="test/other"), tmp_path / "idx")
    assert other.manifest.count == len(VOCAB) - 1  # re-import skipped: still rejected
    store.close()


CHILD = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}, {tests!r}, {here!r}]
    from database_tools.bootstrap import ensure_index
    from database_tools.store import Store
    from test_index import CountingHashEncoder
    store = Store({url!r})
    print(ensure_index(store, CountingHashEncoder(), {idx!r}, vocabulary={vocab!r}).version)
""")


def test_two_processes_at_once(tmp_path: Path) -> None:
    url, idx = f"sqlite:///{tmp_path / 's.db'}", str(tmp_path / "idx")
    Store(url).close()  # migrate once up front
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB[:300]) + "\n", encoding="utf-8")
    here = Path(__file__).resolve().parent
    code = CHILD.format(root=str(here.parents[1]), tests=str(here.parent), here=str(here),
                        url=url, idx=idx, vocab=str(vocab))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    versions = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(versions) == 1
    assert len(list_versions(encoder_root(idx, "test/hash-16"))) == 1
    store = Store(url)
    assert store.count_entries(("concept",)) == 300
    store.close()


def test_default_vocabulary_with_tiny_clip(tiny_clip_dir: str, tmp_path: Path) -> None:
    """The real loading path: tiny random-weight open_clip text tower, whole vocabulary."""
    import torch

    from tag_backend.models import load_clip

    clip = load_clip(tiny_clip_dir, None, torch.device("cpu"), torch.float32)
    encoder = clip.text_encoder()
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    index = ensure_index(store, encoder, tmp_path / "idx")
    assert index.manifest.encoder_id == clip.encoder_id and index.dim == clip.embed_dim
    assert index.manifest.count == len(VOCAB)
    query = encoder.encode(["traffic light", "sky"])
    hits = index.search(query, k=3, return_vectors=True)
    assert [h[0].text for h in hits] == ["traffic light", "sky"]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(hits[1][0].vector, query[1], atol=1e-5)
    store.close()


def test_corrupt_current_version_is_rebuilt(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("sky\nroad\ngrass\n", encoding="utf-8")
    enc = CountingHashEncoder()
    first = ensure_index(store, enc, tmp_path / "idx", vocabulary=vocab)
    (first.path / "index.faiss").write_bytes(b"garbage")
    second = ensure_index(store, enc, tmp_path / "idx", vocabulary=vocab)
    assert second.version != first.version and second.manifest.count == 3
    assert len(enc.encoded) == 3  # the rebuild used the embedding cache
    store.close()
