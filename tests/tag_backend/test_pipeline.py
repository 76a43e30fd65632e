"""The whole engine on tiny random-weight models of the real architectures and synthetic scenes."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from scenes import flat_shapes
from tag_backend.errors import ImageError
from tag_backend.pipeline import TagPipeline
from store_helpers import add_entries


@pytest.fixture(scope="module")
def services(tiny_services_session):
    return tiny_services_session


def _pipeline(services, **knobs) -> TagPipeline:
    knobs.setdefault("n_segments", 3)
    return TagPipeline(services.models.dino, services.models.clip, services.knowledge().index,
                       text_encoder=services.text_encoder, **knobs)


def _matched_iou(gt: np.ndarray, regions) -> np.ndarray:
    ids = np.unique(gt)
    ious = np.zeros((len(ids), len(regions)))
    for i, g in enumerate(ids):
        for j, r in enumerate(regions):
            ious[i, j] = (r.mask & (gt == g)).sum() / (r.mask | (gt == g)).sum()
    rows, cols = linear_sum_assignment(-ious)
    return ious[rows, cols]


@pytest.mark.parametrize("seed", [0, 1])
def test_masks_partition_the_image_and_match_large_shapes(services, seed):
    image, gt = flat_shapes(seed=seed)
    regions = _pipeline(services, merge_same_name=False).generate(image)
    cover = np.sum([r.mask.astype(np.int32) for r in regions], axis=0)
    assert (cover == 1).all(), "every pixel belongs to exactly one region"
    assert all(r.mask.shape == (448, 448) and r.area == int(r.mask.sum()) for r in regions)
    assert len(regions) <= 3
    assert _matched_iou(gt, regions).mean() >= 0.90


def test_masks_are_at_the_original_size_and_aspect(services):
    image, gt = flat_shapes(size=448)
    wide = image.resize((600, 300), Image.NEAREST)
    gt_wide = np.asarray(Image.fromarray(gt.astype(np.uint8)).resize((600, 300), Image.NEAREST))
    for mode in ("squash", "keep_aspect"):
        regions = _pipeline(services, merge_same_name=False, resize_mode=mode).generate(wide)
        assert all(r.mask.shape == (300, 600) for r in regions)
        assert _matched_iou(gt_wide, regions).mean() >= 0.85


def test_names_scores_embeddings_are_finite_and_alternatives_ranked(services):
    image, _ = flat_shapes(seed=2)
    regions = _pipeline(services, n_segments=15).generate(image)
    assert regions
    for r in regions:
        assert r.name and np.isfinite(r.score)
        assert r.embedding is not None and np.isfinite(r.embedding).all()
        assert abs(np.linalg.norm(r.embedding) - 1) < 1e-4
        assert len(r.alternatives) <= 5 and r.name not in [a.name for a in r.alternatives]
        scores = [a.score for a in r.alternatives]
        assert scores == sorted(scores, reverse=True)
        assert r.sources, "the retrieved entries are reported"


def test_k_is_respected_and_results_are_deterministic(services):
    image, _ = flat_shapes(seed=3)
    for k in (1, 2, 5, 15):
        p = _pipeline(services, n_segments=k, merge_same_name=False, min_segment_area=0)
        first = p.generate(image)
        again = p.generate(image)
        assert 1 <= len(first) <= k
        assert [r.name for r in first] == [r.name for r in again]
        assert all((a.mask == b.mask).all() for a, b in zip(first, again))


def test_same_name_segments_are_merged(services, tmp_path):
    """With a one-concept database every segment gets the same name -> one region."""
    from database_tools.index_build import build_index
    from database_tools.store import Store

    store = Store(f"sqlite:///{tmp_path / 'one.db'}")
    add_entries(store, "concept", ["thing"])
    index = build_index(store, services.models.clip.text_encoder(), tmp_path / "index", progress=False)
    image, _ = flat_shapes(seed=4)
    merged = TagPipeline(services.models.dino, services.models.clip, index, n_segments=4).generate(image)
    separate = TagPipeline(services.models.dino, services.models.clip, index, n_segments=4,
                           merge_same_name=False).generate(image)
    assert [r.name for r in merged] == ["thing"] and merged[0].mask.all()
    assert len(separate) > 1 and {r.name for r in separate} == {"thing"}


def test_crf_off_and_dot_assignment_still_partition(services):
    image, gt = flat_shapes(seed=5)
    from tag_backend.stages.crf import CrfParams

    for knobs in (dict(use_crf=False), dict(assignment="dot"), dict(dense_method="naclip"),
                  dict(crf_params=CrfParams(scale=0.5, iterations=5))):
        regions = _pipeline(services, merge_same_name=False, **knobs).generate(image)
        cover = np.sum([r.mask.astype(np.int32) for r in regions], axis=0)
        assert (cover == 1).all()
        assert _matched_iou(gt, regions).mean() >= 0.8


def test_tiny_and_bad_images_raise_clear_errors(services, tmp_path):
    p = _pipeline(services)
    with pytest.raises(ImageError, match="smaller than one"):
        p.generate(Image.new("RGB", (10, 40)))
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageError, match="corrupt|not an image"):
        p.generate(bad)


def test_embed_regions_matches_generated_embeddings(services):
    image, _ = flat_shapes(seed=6)
    p = _pipeline(services, merge_same_name=False)
    regions = p.generate(image)
    emb = p.embed_regions(image, [r.mask for r in regions])
    cos = (emb * np.stack([r.embedding for r in regions])).sum(1)
    assert (cos > 0.97).all()
    with pytest.raises(ValueError, match="empty"):
        p.embed_regions(image, [np.zeros((448, 448), bool)])


def test_invalid_knobs_are_refused(services):
    with pytest.raises(ValueError):
        _pipeline(services, n_segments=0)
    with pytest.raises(ValueError):
        _pipeline(services, min_segment_area=1.5)
    with pytest.raises(ValueError):
        _pipeline(services, resize_mode="stretch").generate(flat_shapes()[0])
