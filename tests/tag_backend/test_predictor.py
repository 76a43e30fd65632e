"""The engine-level Predictor: feature cache (hits skip the backbones), batching, per-call
knowledge snapshots, and the byte-bounded LRU itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scenes import flat_shapes
from tag_backend.exemplars import ExemplarIndex
from tag_backend.feature_cache import FeatureCache, image_digest
from tag_backend.knowledge import Knowledge
from tag_backend.types import DenseFeatures, ImageFeatures, PatchFeatures

from ls_helpers import shared_services
from store_helpers import add_exemplar


@pytest.fixture()
def services(tiny_services_session, tmp_path):
    from tag_backend.services import Services

    shared = shared_services(tiny_services_session, tmp_path, feature_cache_mb=64)
    # One segment per region, so a region's embedding is its segment's (exemplar test).
    return Services(shared.settings, pipeline_overrides={"merge_same_name": False})


@pytest.fixture()
def forwards(monkeypatch):
    """Counts the DINOv2 and dense-CLIP forwards the pipeline runs (images per forward), on
    whichever inference backend the settings select."""
    from tag_backend.inference.forwards import CompiledForwards, TorchForwards

    counts = {"dino": 0, "clip": 0}

    def counting(method, key):
        def wrapper(self, pixels, *args, **kwargs):
            counts[key] += int(pixels.shape[0])
            return method(self, pixels, *args, **kwargs)
        return wrapper

    for cls in (TorchForwards, CompiledForwards):
        monkeypatch.setattr(cls, "dino", counting(cls.dino, "dino"))
        monkeypatch.setattr(cls, "dense", counting(cls.dense, "clip"))
    return counts


def _same(a, b) -> None:
    assert [r.name for r in a] == [r.name for r in b]
    assert all((x.mask == y.mask).all() for x, y in zip(a, b))
    assert np.allclose([r.score for r in a], [r.score for r in b], atol=1e-6)


def test_second_call_on_the_same_image_skips_the_backbones(services, forwards):
    image, _ = flat_shapes(96, seed=4)
    first = services.predictor.predict([image])[0]
    assert forwards == {"dino": 1, "clip": 1} and first
    again = services.predictor.predict([image.copy()])[0]  # same pixels, another object
    assert forwards == {"dino": 1, "clip": 1}, "a cache hit must not run the backbones"
    _same(first, again)
    assert services.predictor.cache.hits == 1 and len(services.predictor.cache) == 1
    # The split API gives the same regions from the kept features.
    kept = services.predictor.features(image)
    _same(first, services.predictor.regions_from_features(kept))
    services.predictor.embed_regions(image, [first[0].mask])
    assert forwards == {"dino": 1, "clip": 1}, "embedding a kept image reuses its features"


def test_batches_mix_cached_and_new_images_in_order(services, forwards):
    a, b, c = (flat_shapes(96, seed=s)[0] for s in (5, 6, 7))
    single = {id(img): services.predictor.predict([img])[0] for img in (a,)}
    assert forwards == {"dino": 1, "clip": 1}
    out = services.predictor.predict([b, a, c])
    assert forwards == {"dino": 3, "clip": 3}, "only the two new images run the backbones"
    _same(out[1], single[id(a)])
    assert all(regions for regions in out)
    assert services.predictor.predict([]) == []


def test_changed_feature_knobs_miss_the_cache(tiny_services_session, tmp_path):
    from tag_backend.services import Services

    base = shared_services(tiny_services_session, tmp_path)
    other = Services(base.settings, pipeline_overrides={"image_size": 56})
    image, _ = flat_shapes(96, seed=8)
    assert base.predictor.feature_key(image) != other.predictor.feature_key(image)
    assert base.predictor.feature_key(image) == base.predictor.feature_key(image.copy())
    shifted = image.copy()
    shifted.putpixel((0, 0), (1, 2, 3))
    assert base.predictor.feature_key(shifted) != base.predictor.feature_key(image)


def test_each_call_names_with_the_snapshot_it_is_given(services):
    image, gt = flat_shapes(96, seed=9)
    current = services.knowledge()
    plain = services.predictor.predict([image], knowledge=current)[0]
    target = max(plain, key=lambda r: r.area)
    memory = ExemplarIndex("test")
    memory._add([(1, 7, target.embedding.astype("<f4").tobytes())])
    memory._names[7] = "zorblax"
    taught = Knowledge(current.index, memory, current.aliases, current.db_version)
    named = services.predictor.predict([image], knowledge=taught)[0]
    assert "zorblax" in {r.name for r in named}
    assert "zorblax" not in {r.name for r in services.predictor.predict([image])[0]}
    assert services.knowledge() is current, "handing a snapshot to one call changes nothing else"


def test_refresh_swaps_a_new_snapshot_and_leaves_the_old_one_untouched(tiny_services_session,
                                                                      tmp_path):
    from ls_helpers import copy_services

    services = copy_services(tiny_services_session, tmp_path)
    assert not services.models_loaded() and services.loaded_knowledge() is None
    assert services.refresh() is False  # nothing loaded: nothing to refresh, nothing loads
    old = services.knowledge()
    assert services.models_loaded() and services.refresh() is False  # unchanged database
    version = services.model_version()
    vector = np.ones(old.index.manifest.dim, np.float32)
    add_exemplar(services.store, services.models.clip.encoder_id, "gizmo",
                                vector / np.linalg.norm(vector), {"source": "test"})
    assert services.refresh() is True
    new = services.knowledge()
    assert new is not old and new.db_version > old.db_version
    # the exemplar memory is followed incrementally (shared, not re-read): the new snapshot
    # knows the exemplar; model_version only moves with a knowledge release
    assert new.exemplars.match(vector[None, :] / np.linalg.norm(vector), 0.99)[0].name == "gizmo"
    assert services.model_version() == version == services.version_for(old)
    from database_tools.releases import cut_release

    cut_release(services.store)
    assert services.refresh() is True and services.model_version() != version


def test_feature_cache_is_bounded_by_bytes_lru():
    def features(n_tokens: int) -> ImageFeatures:
        tokens = torch.zeros(n_tokens, 4)  # 16 bytes per token
        return ImageFeatures(np.zeros((1, 1, 3), np.uint8), (1, 1),
                             PatchFeatures(tokens, (n_tokens, 1)),
                             DenseFeatures(torch.zeros(0, 4), (0, 1)))

    one = features(10).nbytes  # 3 + 160
    cache = FeatureCache(max_bytes=2 * one)
    cache.put("a", features(10))
    cache.put("b", features(10))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", features(10))
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 2 * one
    cache.put("huge", features(100))  # larger than the budget: not kept, nothing evicted
    assert "huge" not in cache and len(cache) == 2
    off = FeatureCache(0)
    off.put("a", features(1))
    assert len(off) == 0 and off.get("a") is None
    with pytest.raises(ValueError):
        FeatureCache(-1)


def test_image_digest_depends_on_pixels_mode_and_size():
    image, _ = flat_shapes(32, seed=1)
    assert image_digest(image) == image_digest(image.copy())
    assert image_digest(image) != image_digest(image.convert("L"))
    assert image_digest(image) != image_digest(image.resize((32, 33)))
