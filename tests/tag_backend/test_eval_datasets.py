"""Evaluator without models: dataset readers, bad input, synthetic scenes, metrics, mapping."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tag_backend.eval.datasets import (
    IGNORE,
    DatasetError,
    SampleError,
    load_sample,
    parse_class_list,
    read_dataset,
    voc_colormap,
)
from tag_backend.eval.mapping import UNMATCHED, MappingError, NameMapper, make_mapping_encoder
from tag_backend.eval.metrics import (
    Confusion,
    hungarian_ious,
    predicted_classes,
    region_majorities,
    region_map_from_masks,
    scores,
)
from tag_backend.eval.synthetic import (
    CLASS_NAMES,
    VOC_IDS,
    jitter,
    make_scene,
    write_synthetic,
    write_voc_layout,
)


def _png(path, array):
    """Palette PNG like VOC's (a full palette keeps Pillow from renumbering the indices)."""
    img = Image.frombytes("P", (array.shape[1], array.shape[0]), array.astype(np.uint8).tobytes())
    img.putpalette(voc_colormap().ravel().tolist())
    img.save(path)


# ----------------------------------------------------------------------------- synthetic scenes
def test_synthetic_scenes_have_exact_varied_ground_truth():
    scenes = [make_scene(seed) for seed in range(30)]
    for s in scenes:
        assert s.image.shape == (224, 224, 3) and s.gt.shape == (224, 224)
        assert s.gt.max() < len(CLASS_NAMES)
        # ground truth is exact: every pixel of a flat class has that class's colour
        red = s.gt == 1
        if red.any():
            assert (s.image[red] == (215, 35, 35)).all()
    assert np.array_equal(make_scene(3).gt, make_scene(3).gt)  # deterministic
    small = [((s.gt == 6).sum() / s.gt.size) for s in scenes]
    assert all(0 < a < 0.03 for a in small)  # small objects present in every scene
    assert len({tuple(np.unique(s.gt)) for s in scenes}) > 5  # varied class mixes
    moved = jitter(scenes[0], seed=1, shift=2, noise=3)
    assert moved.image.shape == scenes[0].image.shape
    assert 0 < np.abs(moved.image.astype(int) - scenes[0].image).mean() < 40


def test_synthetic_folder_is_read_as_a_folder_dataset(tmp_path):
    write_synthetic(tmp_path, count=3, size=64)
    ds = read_dataset("synthetic", tmp_path)
    assert [c.name for c in ds.classes] == list(CLASS_NAMES) and ds.background_ids == [0]
    image, gt = load_sample(ds, ds.samples[0], 10**8)
    assert image.size == (64, 64) and gt.dtype == np.int32
    assert np.array_equal(gt, make_scene(0, 64).gt)


# ----------------------------------------------------------------------------- readers
def test_voc_layout_fixture_reads_with_void_and_background(tmp_path):
    root = write_voc_layout(tmp_path, count=3, size=96)
    ds = read_dataset("voc20", root)  # parent of VOCdevkit is accepted
    assert ds.name == "voc20" and len(ds.samples) == 3 and len(ds.classes) == 21
    assert ds.classes[0].background and ds.classes[1].name == "airplane"
    image, gt = load_sample(ds, ds.samples[0], 10**8)
    scene = make_scene(0, 96)
    assert image.size == (96, 72)
    assert (gt == IGNORE).any()  # 255 outlines
    inner = gt != IGNORE
    expected = np.vectorize(VOC_IDS.get)(scene.gt[:72])
    assert np.array_equal(gt[inner], expected[inner])
    assert read_dataset("voc20", root, limit=2).samples[-1].image_id == ds.samples[1].image_id


def test_voc_rgb_masks_are_decoded_with_the_palette(tmp_path):
    root = write_voc_layout(tmp_path, count=1, size=64)
    ds = read_dataset("voc20", root)
    path = ds.samples[0].mask_path
    index = np.asarray(Image.open(path)).astype(np.int64)
    Image.fromarray(voc_colormap()[index]).save(path)  # someone saved the mask as RGB
    _, gt = load_sample(ds, ds.samples[0], 10**8)
    assert np.array_equal(np.where(index == 255, IGNORE, index), gt)


def test_context59_and_ade150_layouts(tmp_path):
    voc10 = tmp_path / "VOCdevkit" / "VOC2010"
    for sub in ("JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"):
        (voc10 / sub).mkdir(parents=True)
    Image.new("RGB", (32, 24), (9, 9, 9)).save(voc10 / "JPEGImages" / "a.jpg")
    _png(voc10 / "SegmentationClassContext" / "a.png", np.array([[0, 59] * 16] * 24))
    (voc10 / "ImageSets/SegmentationContext/val.txt").write_text("a\n")
    ctx = read_dataset("context59", tmp_path)
    assert len(ctx.classes) == 60 and ctx.classes[59].name == "wood" and ctx.background_ids == [0]
    _, gt = load_sample(ctx, ctx.samples[0], 10**8)
    assert set(np.unique(gt)) == {0, 59}

    ade = tmp_path / "ADEChallengeData2016"
    (ade / "images/validation").mkdir(parents=True)
    (ade / "annotations/validation").mkdir(parents=True)
    Image.new("RGB", (16, 8)).save(ade / "images/validation/ADE_val_1.jpg")
    _png(ade / "annotations/validation/ADE_val_1.png", np.array([[0, 1, 150, 3] * 4] * 8))
    ds = read_dataset("ade150", tmp_path)
    assert len(ds.classes) == 150 and ds.classes[0].name == "wall" and not ds.background_ids
    _, gt = load_sample(ds, ds.samples[0], 10**8)
    assert set(np.unique(gt)) == {IGNORE, 0, 149, 2}


# ----------------------------------------------------------------------------- bad input
def test_missing_folders_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        read_dataset("voc20", tmp_path / "nope")
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match="missing: SegmentationClass"):
        read_dataset("voc20", tmp_path)
    with pytest.raises(DatasetError, match="ADEChallengeData2016"):
        read_dataset("ade150", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        read_dataset("coco", tmp_path)


def test_class_list_errors(tmp_path):
    (tmp_path / "classes.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="empty"):
        parse_class_list(tmp_path / "classes.txt")
    (tmp_path / "classes.txt").write_text("cat\n\ndog\n")
    with pytest.raises(DatasetError, match=":2: empty class name"):
        parse_class_list(tmp_path / "classes.txt")
    (tmp_path / "classes.txt").write_text("Background\ntv monitor|television\n")
    classes = parse_class_list(tmp_path / "classes.txt")
    assert classes[0].background and classes[1].texts == ("tv monitor", "television")


def test_bad_samples_raise_sample_errors(tmp_path):
    write_synthetic(tmp_path, count=4, size=48)
    ds = read_dataset("folder", tmp_path)
    s0, s1, s2, s3 = ds.samples
    _png(s0.mask_path, np.zeros((10, 10)))  # wrong size
    with pytest.raises(SampleError, match="mask is 10x10 but the image is 48x48"):
        load_sample(ds, s0, 10**8)
    _png(s1.mask_path, np.full((48, 48), 42))  # class id not in the list
    with pytest.raises(SampleError, match="class ids not in the class list: 42"):
        load_sample(ds, s1, 10**8)
    s2.image_path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt image
    with pytest.raises(SampleError, match="corrupt|not an image"):
        load_sample(ds, s2, 10**8)
    s3.mask_path.unlink()
    with pytest.raises(SampleError, match="mask not found"):
        load_sample(ds, s3, 10**8)


# ----------------------------------------------------------------------------- metrics
def test_confusion_miou_and_pixel_accuracy_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, IGNORE, 1]], dtype=np.int32)
    region_map = np.array([[0, 0, 0, 1], [1, 1, 1, -1]], dtype=np.int32)
    pred = predicted_classes(region_map, np.array([0, UNMATCHED]), n_classes=3)
    assert pred.tolist() == [[0, 0, 0, 3], [3, 3, 3, 3]]
    conf = Confusion(3)
    conf.add(gt, pred, scored=[0, 1, 2])
    res = scores(conf.matrix, [0, 1, 2])
    # class 0: tp 2, fp 1 (a class-1 pixel), fn 0 -> 2/3; classes 1, 2: tp 0 -> 0
    assert res["per_class_iou"] == pytest.approx({0: 2 / 3, 1: 0.0, 2: 0.0})
    assert res["miou"] == pytest.approx(2 / 9) and res["pixel_accuracy"] == pytest.approx(2 / 7)
    conf2 = Confusion(3)
    conf2.add(gt, pred, scored=[1, 2])  # class 0 not scored (like VOC background in TAG)
    assert conf2.matrix.sum() == 5 and 0 not in scores(conf2.matrix, [1, 2])["per_class_iou"]


def test_region_majority_and_hungarian_matching():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.int32)
    region_map = np.array([[0, 0, 0, 1], [0, 0, 0, 1]], dtype=np.int32)
    assert region_majorities(region_map, gt, 2, [0, 1]).tolist() == [0, 1]
    assert region_majorities(region_map, gt, 2, [1]).tolist() == [1, 1]
    # gt 0 <-> region 0: IoU 4/6; gt 1 <-> region 1: 2/4
    assert hungarian_ious(region_map, gt, 2) == pytest.approx([4 / 6, 0.5])
    # one region for everything: only one gt segment can be matched
    assert hungarian_ious(np.zeros_like(gt), gt, 1) == pytest.approx([0.5, 0.0])
    masks = [region_map == 0, region_map == 1]
    assert np.array_equal(region_map_from_masks(masks, gt.shape), region_map)


class _BagOfLetters:
    """Deterministic toy text encoder for the mapping logic (letter histograms)."""

    encoder_id = "test/letters"
    dim = 26

    def encode(self, texts):
        out = np.zeros((len(texts), 26), np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_name_mapper_nearest_threshold_and_aliases(tmp_path):
    (tmp_path / "classes.txt").write_text("background\ncat|kitty\ndog\n")
    classes = parse_class_list(tmp_path / "classes.txt")
    mapper = NameMapper(_BagOfLetters(), classes)
    cls, cos = mapper.map(["cats", "kitty", "god", "xyz"], [1, 2], None)
    assert cls.tolist() == [1, 1, 2, 1 if cos[3] == mapper.similarities(["xyz"])[0, 1] else 2]
    assert cos[1] >= 1.0  # alias matched exactly
    cls, _ = mapper.map(["cats", "xyz"], [0, 1, 2], threshold=0.8)
    assert cls.tolist() == [1, UNMATCHED]
    with pytest.raises(MappingError):
        NameMapper(_BagOfLetters(), [])


def test_sentence_transformers_mapping_errors_are_clear(tmp_path):
    with pytest.raises(MappingError, match="not a directory"):
        make_mapping_encoder(str(tmp_path / "missing"), None)
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(MappingError, match="sentence-transformers is not installed"):
            make_mapping_encoder(str(tmp_path), None)
    clip = object()
    assert make_mapping_encoder("clip", clip) is clip and make_mapping_encoder(None, clip) is clip
