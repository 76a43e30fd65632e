"""The engine learns from corrections without retraining: exemplars and repeated aliases."""
from __future__ import annotations

import pytest

from scenes import flat_shapes
from tag_backend.config import Settings
from tag_backend.services import Services
from store_helpers import add_entries, add_exemplar


@pytest.fixture()
def one_concept_settings(tiny_models_dir, tmp_path) -> Settings:
    """Settings whose database knows only 'thing' (so every region is predicted as 'thing')."""
    from database_tools.store import Store

    settings = Settings(dino_model=tiny_models_dir["dino"], clip_model=tiny_models_dir["clip"], device="cpu",
                        dtype="float32", data_dir=str(tmp_path), default_vocabulary="none")
    add_entries(Store(settings.resolved_db_url), "concept", ["thing"])
    return settings


def _services(settings: Settings, **knobs) -> Services:
    return Services(settings, pipeline_overrides={"n_segments": 3, **knobs})


def _predict(services: Services, image):
    return services.predictor.predict([image])[0]


def _annotation(ann_id: int, predicted: str, final: str) -> tuple[dict, dict]:
    region = {"id": f"r{ann_id}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
              "value": {"format": "rle", "rle": [0], "brushlabels": ["object"]}}
    text = {"id": f"r{ann_id}", "type": "textarea", "from_name": "name", "to_name": "image"}
    prediction = {"result": [region, {**text, "value": {"text": [predicted]}}]}
    annotation = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": {"id": ann_id},
                  "annotation": {"id": ann_id, "updated_at": "2026-11-22T00:00:00Z", "task": ann_id,
                                 "project": 1, "result": [region, {**text, "value": {"text": [final]}}]}}
    return annotation, prediction


def test_aliases_rename_after_repeated_corrections(one_concept_settings):
    from database_tools.corrections import record_annotation

    services = _services(one_concept_settings)
    image, _ = flat_shapes(seed=0)
    assert {r.name for r in _predict(services, image)} == {"thing"}
    version = services.model_version()
    for i in range(1, services.settings.alias_min_count):
        record_annotation(services.store, *_annotation(i, "thing", "gizmo"))
    services.refresh()
    # 'gizmo' is now a concept of its own (retrievable), but no alias applies yet
    before = _predict(services, image)
    assert all(r.origin != "alias" for r in before), "below the alias threshold"
    assert "thing" in {r.name for r in before}
    record_annotation(services.store, *_annotation(99, "thing", "gizmo"))
    assert services.refresh() and services.model_version() == version  # learnt, not released
    regions = _predict(services, image)
    # the same segments that were still called 'thing' are now renamed by the alias
    assert {r.name for r in regions} == {"gizmo"}
    unmerged = _services(one_concept_settings, merge_same_name=False)
    assert any(r.origin == "alias" for r in _predict(unmerged, image))


def test_exemplar_from_a_corrected_region_names_the_same_region_again(one_concept_settings):
    services = _services(one_concept_settings, merge_same_name=False)
    image, gt = flat_shapes(seed=1)
    disc = gt == 2
    embedding = services.predictor.embed_regions(image, [disc])[0]
    add_exemplar(services.store, services.models.clip.encoder_id, "frisbee", embedding,
                                {"source": "test"})
    services.refresh()
    regions = _predict(services, image)
    best = max(regions, key=lambda r: (r.mask & disc).sum() / (r.mask | disc).sum())
    assert best.name == "frisbee" and best.origin == "exemplar" and best.score >= services.settings.exemplar_threshold
