"""Learning at the right grain, store side: concept ids, bounded exemplars, delta index,
knowledge releases (SQLite and PostgreSQL)."""
from __future__ import annotations

import multiprocessing
import threading

import numpy as np
import pytest

from database_tools.corrections import Learning, record_annotation
from database_tools.exemplar_index import ExemplarIndex, ExemplarLimits, k_center
from database_tools.prediction_log import RegionConcept, record_prediction, stale_tasks
from database_tools.releases import ReleasePolicy, cut_release, list_releases, policy_due
from store_helpers import add_entries, get_entry


def _item(rid: str, name: str) -> list[dict]:
    brush = {"id": rid, "type": "brushlabels", "from_name": "tag", "to_name": "image",
             "value": {"format": "rle", "rle": [0], "brushlabels": ["object"]}}
    text = {"id": rid, "type": "textarea", "from_name": "name", "to_name": "image",
            "value": {"text": [name] if name else []}}
    return [brush, text]


def _annotation(ann_id: int, task: int, regions: list[tuple[str, str]]) -> dict:
    result = [i for rid, name in regions for i in _item(rid, name)]
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1},
            "annotation": {"id": ann_id, "task": task, "project": 1,
                           "updated_at": "2026-01-01T00:00:00Z", "result": result}}


class VectorFor:
    """``embed_region`` returning a fixed vector per region id."""

    encoder_id = "clip/test"

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def __call__(self, item):
        return self.vectors[str(item["id"])]


def _unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_accepted_shown_name_supports_the_predicted_homonym(store):
    add_entries(store, "concept", ["bat (animal)", "bat (club)"])
    animal = get_entry(store, "concept", "bat (animal)").id
    club = get_entry(store, "concept", "bat (club)").id
    record_prediction(store, project="1", task="5", model_version="v", knowledge_seq=1,
                      regions=[RegionConcept("ra", animal, "bat"), RegionConcept("rc", club, "bat")])
    emb = VectorFor({"ra": _unit(1), "rc": _unit(2)})
    report = record_annotation(store, _annotation(1, 5, [("ra", "bat"), ("rc", "bat")]),
                               embed_region=emb)
    assert report.accepted == 2 and report.new_concepts == [] and report.exemplars == 0
    assert get_entry(store, "concept", "bat") is None  # no shadow concept
    assert get_entry(store, "concept", "bat (animal)").support == 2  # import + accepted
    assert get_entry(store, "concept", "bat (club)").support == 2


def test_placeholder_and_empty_names_are_never_learnt(store):
    emb = VectorFor({"a": _unit(1), "b": _unit(2)})
    ann = _annotation(2, 6, [("a", ""), ("b", "Object")])
    report = record_annotation(store, ann, embed_region=emb)
    assert report.regions == 0 and store.count_entries() == 0
    assert store.load_exemplars("clip/test")[0] == []


def test_correction_marks_the_predicted_concept_stale_and_undo_again(store):
    add_entries(store, "concept", ["dog", "cat"])
    dog = get_entry(store, "concept", "dog").id
    cat = get_entry(store, "concept", "cat").id
    seq = store.db_version()
    record_prediction(store, project="1", task="7", model_version="v", knowledge_seq=seq,
                      regions=[RegionConcept("x1", dog, "dog")])
    record_prediction(store, project="1", task="8", model_version="v", knowledge_seq=seq,
                      regions=[RegionConcept("y1", cat, "cat")])
    assert stale_tasks(store, ["7", "8", "9"]) == set()
    record_annotation(store, _annotation(3, 7, [("x1", "wolf")]))
    assert stale_tasks(store, ["7", "8", "9"]) == {"7"}
    # a newer prediction of task 7 made with the new knowledge is not stale
    record_prediction(store, project="1", task="7", model_version="v",
                      knowledge_seq=store.db_version(), regions=[RegionConcept("x2", dog, "dog")])
    assert stale_tasks(store, ["7", "8"]) == set()
    from database_tools.curation import set_concept_status

    set_concept_status(store, ["cat"], "rejected")
    assert stale_tasks(store, ["7", "8"]) == {"8"}


def test_k_center_keeps_distinct_views():
    base = _unit(0, 16)
    near = [base + 0.01 * _unit(i, 16) for i in range(1, 6)]
    far = [_unit(100 + i, 16) for i in range(3)]
    vectors = np.stack([base] + near + far)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chosen = k_center(vectors, 4)
    assert chosen[0] == 0 and set(chosen[1:]) == {6, 7, 8}  # the far views, not near-copies


def test_exemplar_cap_per_concept_and_exact_undo(store):
    limits = Learning(limits=ExemplarLimits(per_concept=2, total=100))
    index = ExemplarIndex("clip/test")
    index.refresh(store)
    vectors = {f"r{i}": _unit(i) for i in range(5)}
    for i in range(5):
        record_annotation(store, _annotation(10 + i, 20 + i, [(f"r{i}", "gizmo")]),
                          embed_region=VectorFor(vectors), learning=limits)
    index.refresh(store)
    assert len(index) == 2 and len(store.load_exemplars("clip/test")[0]) == 2
    served_before = sorted(store.load_exemplars("clip/test")[1].tolist())
    # a sixth annotation changes the selection; deleting it restores exactly the previous one
    vectors["r9"] = -_unit(0)
    record_annotation(store, _annotation(19, 29, [("r9", "gizmo")]),
                      embed_region=VectorFor(vectors), learning=limits)
    index.refresh(store)
    assert len(index) == 2
    record_annotation(store, {"action": "ANNOTATION_DELETED", "annotation": {"id": 19}},
                      learning=limits)
    index.refresh(store)
    assert sorted(store.load_exemplars("clip/test")[1].tolist()) == served_before
    assert len(index) == 2
    match = index.match(vectors["r0"][None, :], 0.5)[0]
    assert match is not None and match.name == "gizmo"


def test_exemplar_total_cap_refuses_new_ones(store):
    limits = Learning(limits=ExemplarLimits(per_concept=5, total=2))
    for i in range(3):
        report = record_annotation(store, _annotation(30 + i, 40 + i, [(f"t{i}", f"n{i}")]),
                                   embed_region=VectorFor({f"t{i}": _unit(i)}), learning=limits)
        assert report.exemplars == (1 if i < 2 else 0) and report.regions == 1
    assert len(store.load_exemplars("clip/test")[0]) == 2


def test_exemplar_index_follows_curation_incrementally(store):
    from database_tools.curation import merge_concepts, set_concept_status

    record_annotation(store, _annotation(50, 60, [("m1", "kitty")]),
                      embed_region=VectorFor({"m1": _unit(5)}))
    add_entries(store, "concept", ["cat"])
    index = ExemplarIndex("clip/test")
    index.refresh(store)
    assert index.match(_unit(5)[None, :], 0.9)[0].name == "kitty"
    merge_concepts(store, ["kitty"], "cat")
    index.refresh(store)
    assert index.match(_unit(5)[None, :], 0.9)[0].name == "cat"
    set_concept_status(store, ["cat"], "rejected")
    index.refresh(store)
    assert len(index) == 0 and index.match(_unit(5)[None, :], 0.9) == [None]
    set_concept_status(store, ["cat"], "active")
    index.refresh(store)
    assert len(index) == 1


def test_delta_index_merges_changes_without_rewriting_the_base(store, encoder, tmp_path):
    from database_tools.curation import rename_concept, set_concept_status
    from database_tools.delta_index import open_live_index
    from database_tools.index_build import build_index

    add_entries(store, "concept", [f"word{i}" for i in range(50)])
    base = build_index(store, encoder, tmp_path / "idx", progress=False)
    live = open_live_index(store, encoder, base)
    assert live.stats().entries == 0
    add_entries(store, "concept", ["zeppelin"])
    set_concept_status(store, ["word3"], "rejected")
    rename_concept(store, "word4", "blimp")
    assert live.refresh(store) == 3
    q = encoder.encode(["zeppelin", "word3", "blimp", "word4", "word5"])
    hits = live.search(q, 3, return_vectors=True)
    assert hits[0][0].text == "zeppelin" and abs(hits[0][0].score - 1.0) < 1e-5
    assert hits[0][0].vector is not None
    assert all(h.text != "word3" for row in hits for h in row)
    assert hits[2][0].text == "blimp" and all(h.text != "word4" for row in hits for h in row)
    assert hits[4][0].text == "word5"  # base hits unaffected
    assert base.version == live.version  # the base version was never rewritten
    assert live.refresh(store) == 0


def _cut(url: str, n: int) -> None:
    from database_tools.store import Store

    with Store(url) as s:
        for _ in range(n):
            cut_release(s, force=True, source="test")


def test_concurrent_releases_never_share_a_number(store):
    threads = [threading.Thread(target=_cut, args=(store.url, 5)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_cut, args=(store.url, 4)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    numbers = sorted(r.number for r in list_releases(store, limit=1000))
    assert numbers == list(range(1, 24))


def test_release_only_when_something_changed_and_policies(store):
    release, created = cut_release(store)
    assert created and release.number == 1
    assert cut_release(store) == (release, False)
    assert not policy_due(store, ReleasePolicy.parse("corrections:1"))
    record_annotation(store, _annotation(70, 80, [("p1", "teapot")]))
    assert policy_due(store, ReleasePolicy.parse("corrections:1"))
    assert not policy_due(store, ReleasePolicy.parse("corrections:2"))
    assert not policy_due(store, ReleasePolicy.parse("manual"))
    assert not policy_due(store, ReleasePolicy.parse("minutes:60"))
    with pytest.raises(ValueError, match="release policy"):
        ReleasePolicy.parse("hourly")


def test_exemplar_index_switches_to_an_inverted_file_and_still_matches(monkeypatch):
    from database_tools import exemplar_index

    monkeypatch.setattr(exemplar_index, "IVF_FROM", 3000)
    index = ExemplarIndex("clip/test")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6000, 16)).astype("<f4")
    rows = [(i + 1, i % 40, vectors[i].tobytes()) for i in range(6000)]
    index._names = {e: f"concept {e}" for e in range(40)}
    index._add(rows[:2000])
    assert index.kind == "flat"
    index._add(rows[2000:])
    assert index.kind == "ivf128,fp16" and len(index) == 6000
    queries = vectors[:50] / np.linalg.norm(vectors[:50], axis=1, keepdims=True)
    found = index.match(queries, 0.99)
    assert all(m is not None and m.entry_id == i % 40 for i, m in enumerate(found))
    index._remove([1, 2])
    assert index.match(queries[:2], 0.99) == [None, None] and len(index) == 5998


def test_release_commands(store):
    from click.testing import CliRunner

    from database_tools.cli import cli

    runner = CliRunner()
    first = runner.invoke(cli, ["--db", store.url, "release", "--note", "first"])
    assert first.exit_code == 0 and "release r1" in first.output
    again = runner.invoke(cli, ["--db", store.url, "release"])
    assert again.exit_code == 0 and "no new release" in again.output
    forced = runner.invoke(cli, ["--db", store.url, "release", "--force"])
    assert "release r2" in forced.output
    listed = runner.invoke(cli, ["--db", store.url, "releases"])
    assert listed.exit_code == 0 and listed.output.splitlines()[0].startswith("r2")
    assert "first" in listed.output


def test_a_grown_inverted_file_is_retrained_in_the_background(monkeypatch):
    from database_tools import exemplar_index

    monkeypatch.setattr(exemplar_index, "IVF_FROM", 1000)
    release, building = threading.Event(), threading.Event()
    real_build = exemplar_index.build_ivf

    def held_build(vectors, ids):
        if len(ids) > 1000:  # the retrain (the first inverted file is built in place)
            building.set()
            assert release.wait(30)
        return real_build(vectors, ids)

    monkeypatch.setattr(exemplar_index, "build_ivf", held_build)
    index = ExemplarIndex("clip/test")
    vectors = np.random.default_rng(0).standard_normal((2100, 16)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [(i + 1, i % 40, vectors[i].tobytes()) for i in range(2100)]
    index._names = {e: f"concept {e}" for e in range(40)}
    index._add(rows[:1000])
    assert index.kind == "ivf16,fp16"
    index._add(rows[1000:2000])  # doubled: a retrain is due, the lookup path does not train
    index._start_retrain()
    assert building.wait(30) and index.kind == "ivf16,fp16"
    assert index.match(vectors[1500:1501], 0.99)[0].entry_id == 1500 % 40  # still served
    index._remove([1, 2])  # changes while the new one trains
    index._add(rows[2000:])
    release.set()
    index._retrainer.join(30)
    assert index.kind == "ivf32,fp16" and len(index) == 2098
    found = index.match(vectors[[0, 1, 2, 2050]], 0.99)
    assert found[0] is None and found[1] is None
    assert found[2].entry_id == 2 % 40 and found[3].entry_id == 2050 % 40
