"""Corrections from Label Studio annotations: learning, idempotency, update, delete."""
from __future__ import annotations

import json

import numpy as np
import pytest

from database_tools.corrections import ingest_export, record_annotation
from database_tools.curation import stats
from store_helpers import add_entries, get_entry


def brush(region_id: str, label: str = "object") -> dict:
    return {"id": region_id, "from_name": "tag", "to_name": "image", "type": "brushlabels",
            "original_width": 4, "original_height": 4, "image_rotation": 0,
            "value": {"format": "rle", "rle": [0, 1, 2], "brushlabels": [label]}}


def textarea(region_id: str, name: str) -> dict:
    return {"id": region_id, "from_name": "name", "to_name": "image", "type": "textarea",
            "value": {"text": [name]}}


def region(region_id: str, name: str) -> list[dict]:
    return [brush(region_id), textarea(region_id, name)]


PREDICTION = {"id": 7, "model_version": "tag-x", "result": region("r1", "dog") + region("r2", "sofa")}


def payload(action="ANNOTATION_CREATED", ann_id=11, updated="2025-01-01T10:00:00.000000Z",
            result=None) -> dict:
    result = result if result is not None else region("r1", "golden retriever") + region(
        "r2", "sofa") + region("r3", "lamp")
    return {"action": action,
            "annotation": {"id": ann_id, "result": result, "updated_at": updated, "task": 5,
                           "project": 2, "completed_by": 1, "parent_prediction": 7},
            "task": {"id": 5, "data": {"image": "/x.png"}, "predictions": [PREDICTION]},
            "project": {"id": 2}}


def support(store, name):
    entry = get_entry(store, "concept", name)
    return None if entry is None else (entry.support, entry.status)


class Embedder:
    encoder_id = "clip/test"

    def __init__(self):
        self.calls = 0

    def __call__(self, item):
        self.calls += 1
        assert item["type"] == "brushlabels"
        return np.full(4, float(self.calls), dtype=np.float32)


def test_webhook_created_learns_concepts_aliases_exemplars(store):
    emb = Embedder()
    report = record_annotation(store, payload(), embed_region=emb)
    # exemplars only from the renamed (r1) and hand-drawn (r3) regions, not the accepted sofa
    assert report.recorded == 1 and report.regions == 3 and report.exemplars == 2
    assert sorted(report.new_concepts) == ["golden retriever", "lamp", "sofa"]
    assert report.aliases == [("dog", "golden retriever")]
    assert support(store, "golden retriever") == (1, "active")
    names, vectors = store.load_exemplars("clip/test")
    assert sorted(names) == ["golden retriever", "lamp"] and vectors.shape == (2, 4)
    assert stats(store).most_corrected == [("golden retriever", 1)]


def test_replay_is_idempotent(store):
    emb = Embedder()
    record_annotation(store, payload(), embed_region=emb)
    version = store.db_version()
    report = record_annotation(store, payload(), embed_region=emb)
    assert report.duplicates == 1 and report.recorded == 0
    assert emb.calls == 2  # replays are detected before any region is embedded
    assert support(store, "sofa") == (1, "active") and store.db_version() == version


def test_update_replaces_previous_contribution(store):
    emb = Embedder()
    record_annotation(store, payload(), embed_region=emb)
    newer = payload("ANNOTATION_UPDATED", updated="2025-01-01T11:00:00Z",
                    result=region("r1", "labrador") + region("r2", "sofa"))
    report = record_annotation(store, newer, embed_region=emb)
    assert report.replaced == 1 and report.recorded == 1
    assert support(store, "golden retriever") == (0, "removed")
    assert support(store, "lamp") == (0, "removed")
    assert support(store, "labrador") == (1, "active") and support(store, "sofa") == (1, "active")
    assert sorted(store.load_exemplars("clip/test")[0]) == ["labrador"]
    older = payload("ANNOTATION_UPDATED", updated="2025-01-01T10:30:00Z")
    assert record_annotation(store, older).duplicates == 1  # late, older replay ignored
    assert support(store, "labrador") == (1, "active")


def test_deletion_undoes_and_is_idempotent(store):
    record_annotation(store, payload(), embed_region=Embedder())
    add_entries(store, "concept", ["sofa"])  # also known from an import: must survive
    report = record_annotation(store, {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 11}]})
    assert report.deleted == 1
    assert support(store, "golden retriever") == (0, "removed")
    assert support(store, "sofa") == (1, "active")
    assert store.load_exemplars("clip/test")[0] == []
    assert stats(store).aliases == 0
    again = record_annotation(store, {"action": "ANNOTATION_DELETED", "annotation": {"id": 11}})
    assert again.duplicates == 1
    assert record_annotation(store, payload()).duplicates == 1  # late replay after delete


def test_empty_result_unknown_action_and_policy(store):
    report = record_annotation(store, payload(result=[]))
    assert report.recorded == 1 and report.regions == 0 and store.count_entries() == 0
    assert record_annotation(store, {"action": "PROJECT_UPDATED", "project": {}}).ignored == 1
    record_annotation(store, payload(ann_id=12, result=region("a", "teapot")),
                      new_concept_status="pending")
    assert support(store, "teapot") == (1, "pending")
    with pytest.raises(ValueError, match="encoder_id"):
        record_annotation(store, payload(), embed_region=lambda item: None)


def test_labels_only_region_and_explicit_prediction(store):
    ann = {"id": 21, "updated_at": "2025-02-02T00:00:00Z",
           "result": [brush("p1", "Cat"), {"id": "t", "type": "textarea",
                                           "value": {"text": ["task level note"]}}]}
    report = record_annotation(store, ann, prediction=[brush("p1", "dog")])
    assert report.aliases == [("dog", "cat")] and support(store, "cat") == (1, "active")
    assert get_entry(store, "concept", "task level note") is None


def test_ingest_export(store, tmp_path):
    tasks = [
        {"id": 5, "data": {}, "predictions": [PREDICTION],
         "annotations": [dict(payload()["annotation"]), {"id": 12, "result": region("r1", "dog"),
                                                          "updated_at": "2025-01-03T00:00:00Z",
                                                          "was_cancelled": False}]},
        {"id": 6, "data": {}, "annotations": [], "predictions": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    report = ingest_export(store, path)
    assert report.recorded == 2 and report.regions == 4 and report.exemplars == 0
    assert support(store, "dog") == (1, "active")
    assert ingest_export(store, path).duplicates == 2
    path.write_text('[{"id": 1, "annotations": [')
    with pytest.raises(Exception, match="not a Label Studio JSON export"):
        ingest_export(store, path)


def test_concurrent_replays_count_once(store):
    import threading

    from database_tools.store import Store

    def replay():
        with Store(store.url) as s:
            for _ in range(5):
                record_annotation(s, payload())

    threads = [threading.Thread(target=replay) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert support(store, "sofa") == (1, "active")
    assert stats(store).aliases == 1
