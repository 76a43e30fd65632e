"""k-means, pixel assignment, small-segment dropping, pooling: against brute-force references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tag_backend.stages.kmeans import kmeans
from tag_backend.stages.pooling import pool_segments
from tag_backend.stages.segments import (
    drop_small_segments,
    grid_scores,
    label_map,
    patch_weights,
    upsample_labels,
    upsample_scores,
)


def _blobs(n_per=60, k=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 10
    x = torch.cat([c + torch.randn(n_per, dim, generator=g) for c in centers])
    return x, torch.arange(k).repeat_interleave(n_per)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_recovers_separated_clusters(init):
    x, truth = _blobs()
    res = kmeans(x, 4, init=init, n_init=8, seed=1)
    # each true cluster maps to exactly one label
    pairs = {(int(t), int(lab)) for t, lab in zip(truth, res.labels)}
    assert len(pairs) == 4 and len({p[1] for p in pairs}) == 4


def test_kmeans_deterministic_for_seed_and_k_respected():
    x, _ = _blobs(seed=3)
    a = kmeans(x, 6, seed=7)
    b = kmeans(x, 6, seed=7)
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.centers, b.centers)
    assert a.centers.shape == (6, 8) and int(a.labels.max()) < 6


def test_kmeans_k_larger_than_points_and_bad_args():
    x = torch.randn(5, 3)
    assert kmeans(x, 15).centers.shape[0] == 5
    with pytest.raises(ValueError):
        kmeans(x, 0)
    with pytest.raises(ValueError):
        kmeans(x, 2, init="bogus")


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_mean_shift_convergence_ends_at_a_lloyd_fixed_point(init):
    """torch-kmeans' test (TAG): iterate until every restart's mean centre shift is below tol;
    with a tiny tol the centres are exactly the means of the points assigned to them."""
    x, _ = _blobs(n_per=40, k=5, seed=9)
    res = kmeans(x, 5, init=init, n_init=4, tol=1e-9, convergence="mean_shift", seed=2)
    nearest = ((x[:, None, :] - res.centers[None]) ** 2).sum(-1).argmin(1)
    assert torch.equal(nearest, res.labels)
    for c in range(5):
        assert torch.allclose(res.centers[c], x[res.labels == c].mean(0), atol=1e-4)
    with pytest.raises(ValueError, match="convergence"):
        kmeans(x, 5, convergence="labels")


def test_kmeans_inertia_matches_bruteforce():
    x, _ = _blobs(seed=5)
    res = kmeans(x, 4)
    brute = ((x[:, None, :] - res.centers[None]) ** 2).sum(-1).min(1).values.sum()
    assert res.inertia == pytest.approx(float(brute), rel=1e-4)


@pytest.mark.parametrize("assignment", ["nearest", "dot"])
def test_grid_scores_upsampled_equal_upsample_then_score(assignment):
    """Scoring on the grid then upsampling == TAG's upsample-features-then-score (linearity)."""
    g = torch.Generator().manual_seed(0)
    grid, size = (4, 5), (28, 35)
    tokens, centers = torch.randn(20, 6, generator=g), torch.randn(3, 6, generator=g)
    fast = upsample_scores(grid_scores(tokens, grid, centers, assignment), size)
    feats = F.interpolate(tokens.T.reshape(1, 6, *grid), size=size, mode="bilinear", align_corners=False)[0]
    feats = feats.reshape(6, -1).T  # (pixels, D)
    if assignment == "dot":
        ref = feats @ centers.T
    else:
        ref = -((feats[:, None] - centers[None]) ** 2).sum(-1)
    assert torch.equal(fast.reshape(3, -1).T.argmax(1), ref.argmax(1))


def test_drop_small_segments_keeps_partition_and_renumbers():
    logits = torch.zeros(4, 10, 10)
    logits[0, :, :5] = 5
    logits[1, :, 5:] = 5
    logits[2, 0, 0] = 9  # a 1-pixel segment
    logits[1, 0, 0] = 8  # ... whose next best is segment 1
    labels = logits.argmax(0).numpy()
    out = drop_small_segments(labels, logits, min_pixels=3)
    assert set(np.unique(out)) == {0, 1}
    assert out[0, 0] == out[0, 9]  # absorbed by its next-best segment
    assert out.shape == labels.shape


def test_patch_weights_sum_to_one_per_patch_and_pooling_is_weighted_mean():
    labels = np.zeros((8, 8), np.int64)
    labels[:, 4:] = 1
    labels[:2, :2] = 2
    w = patch_weights(labels, (2, 2), torch.device("cpu"))
    assert torch.allclose(w.sum(0), torch.ones(4))
    feats = torch.randn(4, 5)
    pooled = pool_segments(w, feats)
    ref = F.normalize((w @ feats) / w.sum(1, keepdim=True), dim=1).numpy()
    assert np.allclose(pooled, ref, atol=1e-6)
    assert np.isfinite(pooled).all()


@pytest.mark.parametrize("shape, grid", [((48, 64), (4, 8)), ((50, 61), (4, 8))])
def test_patch_weights_equal_area_pooling_of_the_one_hot_map(shape, grid):
    """Counting labels per patch (whole patches) and adaptive pooling (otherwise) agree."""
    labels = np.random.default_rng(0).integers(0, 5, shape)
    one_hot = F.one_hot(torch.from_numpy(labels), 5).permute(2, 0, 1).float()[None]
    expected = F.adaptive_avg_pool2d(one_hot, grid)[0].reshape(5, -1)
    assert torch.allclose(patch_weights(labels, grid, torch.device("cpu")), expected, atol=1e-6)


def test_label_map_is_the_first_argmax():
    logits = torch.randint(0, 3, (6, 20, 30)).float()  # many ties
    logits[4:] = float("-inf")
    np.testing.assert_array_equal(label_map(logits), logits.argmax(0).numpy())


def test_pooling_refuses_empty_segment():
    with pytest.raises(ValueError, match="zero area"):
        pool_segments(torch.zeros(1, 4), torch.randn(4, 3))


def test_upsample_labels_shape_and_agreement():
    labels = np.zeros((10, 10), np.int64)
    labels[:, 5:] = 1
    full = upsample_labels(labels, (40, 30))
    assert full.shape == (40, 30)
    assert (full[:, :12] == 0).all() and (full[:, 18:] == 1).all()


def test_crf_runs_in_a_helper_process_and_matches_in_process_inference():
    import os

    from tag_backend.stages import crf

    if not crf.crf_available():
        pytest.skip("pydensecrf2 not installed")
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[:, 20:] = 200
    logits = torch.zeros(2, 32, 40)
    logits[0, :, :22] = 1.0
    logits[1, :, 22:] = 1.0
    params = crf.CrfParams(unary_gain=None)
    isolated = crf.submit_crf(rgb, logits, params)()
    probs = torch.softmax(logits, 0).numpy()
    direct = crf.crf_inference(rgb, probs, params.iterations, params.gaussian_sxy, params.gaussian_compat,
                               params.bilateral_sxy, params.bilateral_srgb, params.bilateral_compat)
    assert np.allclose(isolated.numpy(), direct, atol=1e-6)
    assert crf._submit(os.getpid).result() != os.getpid(), "pydensecrf holds the GIL: keep it out of the server"
    refined = crf.submit_crf(rgb, logits, crf.CrfParams(scale=0.5, iterations=5))()
    assert refined.shape == (2, 32, 40) and torch.allclose(refined.sum(0), torch.ones(32, 40), atol=1e-4)
    # Coarse (patch-grid) scores are resampled straight to the CRF resolution; the result is at
    # the image's resolution, the same as when the caller upsampled them first.
    coarse = torch.randn(2, 4, 5)
    from_grid = crf.submit_crf(rgb, coarse, params)()
    assert from_grid.shape == (2, 32, 40)
    assert torch.allclose(from_grid, crf.submit_crf(rgb, upsample_scores(coarse, (32, 40)), params)(), atol=1e-6)


class _FakePending:
    def __init__(self) -> None:
        self.finished = False

    def done(self) -> bool:
        return self.finished


@pytest.fixture()
def two_threads_on_two_cores(monkeypatch):
    from tag_backend.stages import crf

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(crf, "_usable_cores", lambda: 2)
    yield crf
    torch.set_num_threads(before)


def test_lend_core_gives_the_crf_a_core_until_it_is_done(two_threads_on_two_cores):
    crf = two_threads_on_two_cores
    pending = _FakePending()
    with crf.lend_core([pending, None]) as rebalance:
        assert torch.get_num_threads() == 1
        rebalance()
        assert torch.get_num_threads() == 1  # still running
        pending.finished = True
        rebalance()
        assert torch.get_num_threads() == 2  # taken back mid-forward
        rebalance()
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), crf.lend_core([_FakePending()]):
        raise RuntimeError("forward failed")
    assert torch.get_num_threads() == 2  # restored on errors too


def test_lend_core_concurrent_borrowers_restore_the_original_count(two_threads_on_two_cores):
    crf = two_threads_on_two_cores
    first, second = _FakePending(), _FakePending()
    outer = crf.lend_core([first])
    outer.__enter__()
    with crf.lend_core([second]):
        assert torch.get_num_threads() == 1  # one core lent, not two
        outer.__exit__(None, None, None)
        assert torch.get_num_threads() == 1  # the other prediction still lends it
    assert torch.get_num_threads() == 2


def test_lend_core_does_nothing_with_a_free_core_or_finished_crfs(two_threads_on_two_cores, monkeypatch):
    crf = two_threads_on_two_cores
    done = _FakePending()
    done.finished = True
    with crf.lend_core([done, None]):
        assert torch.get_num_threads() == 2
    monkeypatch.setattr(crf, "_usable_cores", lambda: 4)
    with crf.lend_core([_FakePending()]):
        assert torch.get_num_threads() == 2
