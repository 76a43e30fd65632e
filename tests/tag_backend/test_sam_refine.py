"""SAM 2 refinement: strict loading, decoding equal to transformers' own path, prompts, overlaps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tag_backend.errors import ConfigError, WeightsNotFoundError
from tag_backend.sam_models import load_sam
from tag_backend.stages.sam_refine import SamPrompt, SamRefiner, interior_points

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sam(tiny_sam_dir):
    return load_sam(tiny_sam_dir, CPU, torch.float32)


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.default_rng(0)
    img = np.full((90, 130, 3), 120, np.uint8)
    img[10:60, 20:70] = (200, 40, 40)
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    return img


def test_loader_is_strict(tmp_path, tiny_sam_dir, tiny_dino_dir):
    assert load_sam(tiny_sam_dir, CPU, torch.float32) is load_sam(tiny_sam_dir, CPU, torch.float32)
    with pytest.raises(WeightsNotFoundError, match="TAG_SAM_MODEL"):
        load_sam(str(tmp_path / "missing" / "dir"), CPU, torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        load_sam(str(tmp_path / "empty"), CPU, torch.float32)
    with pytest.raises(ConfigError, match="SAM 2"):
        load_sam(tiny_dino_dir, CPU, torch.float32)


def test_decoding_matches_transformers_post_processing(sam, rgb):
    """Cached embeddings + our batching + our upsampling == processor -> model -> post_process_masks."""
    refiner = SamRefiner(sam)
    image = refiner.embed(rgb)
    prompts = [SamPrompt(box=(20, 10, 70, 60), points=[(45, 35), (100, 80)], labels=[1, 0]),
               SamPrompt(box=(0, 0, 129, 89), points=[(10, 80)], labels=[1])]
    low, iou = refiner.decode(image, prompts)
    ours = refiner.upsample(low, image.original_size)
    proc = sam.processor
    inputs = proc(images=rgb, input_points=[[[[45, 35], [100, 80]], [[10, 80], [-10, -10]]]],
                  input_labels=[[[1, 0], [1, -10]]], input_boxes=[[[20, 10, 70, 60], [0, 0, 129, 89]]],
                  return_tensors="pt")
    with torch.inference_mode():
        out = sam.model(**inputs, multimask_output=False)
    ref = proc.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[0]
    assert ours.shape == ref.shape == (2, 1, 90, 130)
    assert torch.allclose(ours, ref, atol=1e-4)
    assert torch.allclose(iou, out.iou_scores[0], atol=1e-5)
    binary = proc.post_process_masks(out.pred_masks, inputs["original_sizes"])[0]
    assert torch.equal(ours > refiner.mask_threshold, binary)
    # A single click: three candidate masks, like transformers' default multimask output.
    low, iou = refiner.decode(image, [SamPrompt(points=[(45, 35)], labels=[1])], multimask=True)
    inputs = proc(images=rgb, input_points=[[[[45, 35]]]], input_labels=[[[1]]], return_tensors="pt")
    with torch.inference_mode():
        out = sam.model(**inputs)
    ref = proc.post_process_masks(out.pred_masks, inputs["original_sizes"], binarize=False)[0]
    assert torch.allclose(refiner.upsample(low, image.original_size), ref, atol=1e-4)


def test_prompts_cover_every_part_with_inside_and_neighbour_points(sam):
    labels = np.zeros((40, 60), np.int64)
    labels[5:15, 5:20] = 1       # segment 1 in two parts
    labels[25:35, 40:55] = 1
    labels[20:40, 0:30] = 2      # segment 2 touches nothing of 1's second part
    prompts, owners, parts = SamRefiner(sam).segment_prompts(labels, (80, 120))
    assert owners.count(1) == 2 and owners.count(0) == 1 and owners.count(2) == 1
    for prompt, seg, part in zip(prompts, owners, parts):
        ys, xs = np.nonzero(part)
        x0, y0, x1, y1 = prompt.box
        assert (x0, y0, x1, y1) == (xs.min() * 2, ys.min() * 2, (xs.max() + 1) * 2, (ys.max() + 1) * 2)
        for (x, y), lab in zip(prompt.points, prompt.labels):
            inside = labels[int(y / 2), int(x / 2)]
            assert (inside == seg) == (lab == 1)
        assert 1 in prompt.labels and (seg != 1 or 0 in prompt.labels)


def test_interior_points_are_deep_and_spread():
    mask = np.zeros((50, 100), bool)
    mask[10:40, 5:95] = True
    pts = interior_points(mask, 3)
    assert len(pts) == 3 and all(mask[y, x] for x, y in pts)
    assert min(abs(a[0] - b[0]) for a in pts for b in pts if a != b) >= 15
    assert interior_points(np.zeros((5, 5), bool), 2) == []


def test_overlaps_resolved_by_logit_and_unclaimed_pixels_filled(sam):
    refiner = SamRefiner(sam)
    labels = np.zeros((20, 20), np.int64)
    labels[:, 10:] = 1
    # Segment 0's SAM mask reaches 4 px into segment 1 (not refined): SAM's boundary wins there.
    low0 = torch.full((256, 256), -5.0)
    low0[:, : int(256 * 0.7)] = 5.0
    out = refiner._resolve(labels, {0: low0}, (20, 20))
    assert (out[:, :14] == 0).all() and (out[:, 14:] == 1).all()
    # Segment 1 refined to a smaller mask: its left-out pixels go to the nearest claimed label.
    low1 = torch.full((256, 256), -5.0)
    low1[:, int(256 * 0.8):] = 5.0
    out = refiner._resolve(labels, {1: low1}, (20, 20))
    assert (out[:, :16] == 0).all() and (out[:, 16:] == 1).all()


def test_refine_returns_full_size_ids_and_pooling_weights(sam, rgb):
    labels = np.zeros((28, 42), np.int64)
    labels[3:19, 6:22] = 1
    labels[:, 35:] = 2
    keep_all = SamRefiner(sam, min_iou=1.0)
    full, weights = keep_all.refine(keep_all.embed(rgb), labels, (2, 3))
    assert full.shape == rgb.shape[:2] and set(np.unique(full)) == {0, 1, 2}
    assert weights.shape == (3, 6) and bool((weights.sum(1) > 0).all())
    accept = SamRefiner(sam, min_iou=0.0)
    full, weights = accept.refine(accept.embed(rgb), labels, (2, 3))
    k = int(full.max()) + 1
    assert full.shape == rgb.shape[:2] and set(np.unique(full)) == set(range(k))
    assert weights.shape == (k, 6) and bool((weights.sum(1) > 0).all())
    # Large images are resolved at max_work_side and enlarged: same contract.
    small = SamRefiner(sam, min_iou=0.0, max_work_side=40)
    full, weights = small.refine(small.embed(rgb), labels, (2, 3))
    k = int(full.max()) + 1
    assert full.shape == rgb.shape[:2] and set(np.unique(full)) == set(range(k))
    assert weights.shape == (k, 6) and bool((weights.sum(1) > 0).all())


def test_bad_prompts_are_refused():
    with pytest.raises(ValueError):
        SamPrompt(points=[(1, 2)], labels=[])
    with pytest.raises(ValueError):
        SamPrompt()
    with pytest.raises(ValueError):
        SamPrompt(points=[(1, 2)], labels=[2])


def test_pipeline_with_sam_refinement(tiny_services_session, tiny_sam_dir, tmp_path):
    from scenes import flat_shapes

    from ls_helpers import shared_services

    services = shared_services(tiny_services_session, tmp_path, refine="sam2", sam_model=tiny_sam_dir)
    refiner = services.models.refiner
    assert services.pipeline().refiner is refiner and refiner.model_id == tiny_sam_dir
    assert "-sam2-" in services.model_version()
    image, _ = flat_shapes(120, seed=1)
    timings: dict[str, float] = {}
    regions = services.predictor.predict([image], timings=timings)[0]
    assert regions and "sam_refine" in timings and "sam_embed" in timings
    # The SAM embeddings are kept with the features: a second call refines without the image
    # encoder and gives the same regions.
    again: dict[str, float] = {}
    second = services.predictor.predict([image], timings=again)[0]
    assert "sam_embed" not in again and "sam_refine" in again
    assert [r.name for r in second] == [r.name for r in regions]
    assert all((a.mask == b.mask).all() for a, b in zip(regions, second))
    cover = np.zeros((120, 120), int)
    for r in regions:
        assert r.mask.shape == (120, 120) and r.area == int(r.mask.sum()) > 0
        assert r.embedding is not None and abs(float(np.linalg.norm(r.embedding)) - 1) < 1e-4
        cover += r.mask
    assert (cover == 1).all()  # a partition of the image


def test_refine_setting_is_validated():
    from tag_backend.config import settings_from_env

    assert settings_from_env({"TAG_REFINE": "SAM2"}).refine == "sam2"
    with pytest.raises(ConfigError, match="TAG_REFINE"):
        settings_from_env({"TAG_REFINE": "sam3"})
