"""The evaluator end to end with the tiny random-weight models (real loaders, real pipeline,
real store and index): synthetic benchmark, VOC-layout fixture through the CLI, bad input,
resuming, the simulated correction loop and the one-correction recall test."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tag_backend.config import Settings
from tag_backend.eval.cli import eval_command
from tag_backend.eval.metrics import region_majorities
from tag_backend.eval.predict import prediction_from_regions
from tag_backend.eval.runner import EvalConfig, run_eval
from tag_backend.eval.simulate import record_correction
from tag_backend.eval.synthetic import jitter, make_scene, write_synthetic, write_voc_layout


@pytest.fixture(scope="module")
def eval_settings(tiny_models_dir, tmp_path_factory) -> Settings:
    data = tmp_path_factory.mktemp("eval-data")
    return Settings(preset="fast", dino_model=tiny_models_dir["dino"], clip_model=tiny_models_dir["clip"],
                    device="cpu", dtype="float32", data_dir=str(data))


@pytest.fixture(scope="module")
def eval_services(eval_settings):
    from tag_backend.services import Services

    services = Services(eval_settings)
    services.pipeline()  # builds the default-vocabulary index once for the module
    return services


def test_synthetic_benchmark_scores_lists_failures_and_resumes(eval_settings, eval_services, tmp_path,
                                                               monkeypatch):
    root = write_synthetic(tmp_path / "syn", count=5, size=224)
    (root / "images" / "scene_00003.png").write_bytes(b"not an image")
    Image.new("P", (10, 10)).save(root / "masks" / "scene_00004.png")
    config = EvalConfig(dataset="synthetic", root=root, report_dir=tmp_path / "rep", limit=5,
                        image_size=224, grid_images=2, progress=False)
    result = run_eval(config, eval_settings, eval_services)
    s = result.summary
    assert s["images"] == 3 and s["failures"]["count"] == 2
    reasons = dict(result.failures)
    assert "not an image" in reasons["scene_00003"] and "mask is 10x10" in reasons["scene_00004"]
    tag, strict = s["protocols"]["tag"], s["protocols"]["strict"]
    assert tag["classes_scored"] == 6 and strict["classes_scored"] == 7
    assert "background" not in tag["per_class_iou"] and "background" in strict["per_class_iou"]
    for p in (tag, strict):
        assert 0 <= p["miou"] <= 1 and 0 <= p["pixel_accuracy"] <= 1 and p["regions_scored"] > 0
    # mask quality: a pipeline that collapses to one region scores ~0.15 here; measured ~0.45
    assert 0.25 < s["mask_quality"]["hungarian_miou"] <= 1
    assert s["names"]["distinct"] > 0 and sum(c for _, c in s["names"]["top"]) > 0
    report = json.loads(result.files["json"].read_text())
    assert report["failures"]["count"] == 2 and report["pipeline"]["image_size"] == 224
    md = result.files["markdown"].read_text()
    assert "| tag |" in md and "Hungarian-matched mIoU" in md and "scene_00003" in md
    assert Image.open(result.files["grid"]).size[0] == 768

    # Resume: a second run takes every prediction from the cache (the predictor is not called).
    def fail(*_a, **_k):
        raise AssertionError("predictor called although the prediction is cached")

    monkeypatch.setattr("tag_backend.predictor.Predictor.predict", fail)
    again = run_eval(config, eval_settings, eval_services).summary
    assert again["protocols"] == s["protocols"] and again["mask_quality"] == s["mask_quality"]


def test_cli_on_a_voc_layout_fixture(eval_settings, tmp_path, monkeypatch):
    root = write_voc_layout(tmp_path / "voc", count=2, size=224)
    for var, value in (("TAG_DINO_MODEL", eval_settings.dino_model), ("TAG_CLIP_MODEL", eval_settings.clip_model),
                       ("TAG_DEVICE", "cpu"), ("TAG_DTYPE", "float32"), ("TAG_DATA_DIR", eval_settings.data_dir)):
        monkeypatch.setenv(var, value)
    report = tmp_path / "rep"
    result = CliRunner().invoke(eval_command, ["--dataset", "voc20", "--root", str(root), "--report",
                                               str(report), "--image-size", "224", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "tag: mIoU" in result.output and "strict: mIoU" in result.output
    summary = json.loads((report / "report.json").read_text())
    assert summary["images"] == 2 and summary["dataset"]["name"] == "voc20"
    assert summary["protocols"]["tag"]["classes_scored"] == 20  # VOC-20: background ignored
    assert summary["protocols"]["strict"]["classes_scored"] == 21
    assert (report / "examples.png").exists()

    missing = CliRunner().invoke(eval_command, ["--dataset", "voc20", "--root", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "no such directory" in missing.output
    assert "Traceback" not in missing.output


def test_simulated_corrections_curve_on_a_scratch_database(eval_settings, eval_services, tmp_path):
    root = write_synthetic(tmp_path / "syn", count=4, size=224)
    config = EvalConfig(dataset="synthetic", root=root, report_dir=tmp_path / "rep", limit=4,
                        image_size=224, n_segments=8, simulate_corrections=2, curve_points=3,
                        grid_images=1, progress=False)
    result = run_eval(config, eval_settings)
    corrections = result.summary["corrections"]
    curve = corrections["curve"]
    assert [row["corrected_images"] for row in curve] == [0, 1, 2]
    assert [s["image_id"] for s in corrections["steps"]] == ["scene_00000", "scene_00001"]
    assert curve[-1]["corrected_regions"] == sum(s["corrected"] for s in corrections["steps"]) > 0
    assert result.summary["images"] == 2  # only the images after the corrected ones are scored
    assert curve[-1]["strict_region_accuracy"] >= curve[0]["strict_region_accuracy"]
    assert "Quality vs. number of corrections" in result.files["markdown"].read_text()
    # the user's database is untouched: the replay ran on a scratch copy
    assert eval_services.store.load_exemplars(eval_services.models.clip.encoder_id)[0] == []
    # resuming replays nothing and reproduces the curve
    assert run_eval(config, eval_settings).summary["corrections"]["curve"] == curve


def _object_regions(prediction, gt: np.ndarray, limit: int) -> list[int]:
    """Regions an annotator would name: mostly (>= 70 %) one foreground object, largest first."""
    majority = region_majorities(prediction.region_map, gt, prediction.n_regions, list(range(7)))
    chosen = []
    for r in range(prediction.n_regions):
        inside = gt[prediction.region_map == r]
        if majority[r] > 0 and (inside == majority[r]).mean() >= 0.7:
            chosen.append(r)
    return sorted(chosen, key=lambda r: -int((prediction.region_map == r).sum()))[:limit]


def test_one_correction_renames_the_next_near_identical_region(eval_settings, eval_services):
    """One corrected region (recorded through record_annotation + refresh) must name the same
    region of a near-identical image (same scene, 1 px shift, new pixel noise) in >= 95 % of
    cases. Each scene is an independent case: its annotation is deleted afterwards."""
    from database_tools.corrections import delete_annotation
    from tag_backend.services import Services

    eval_services.pipeline()  # the module's default-vocabulary index exists
    # speed: the loop, not the masks, is tested
    services = Services(eval_settings, pipeline_overrides={"image_size": 224, "use_crf": False,
                                                           "kmeans_restarts": 1})

    def predict(image):
        return services.predictor.predict([Image.fromarray(image)])[0]
    words = ["aardvark", "bagpipe", "cathedral", "dulcimer", "espresso", "flamingo", "gondola",
             "harmonica", "iguana", "jackfruit", "kayak", "lighthouse", "mandolin", "narwhal",
             "origami", "pelican", "quartz", "raccoon", "saxophone", "tambourine", "ukulele",
             "vulture", "walrus", "xylophone", "yodeler", "zeppelin"]
    cases = hits = leaks = 0
    try:
        for seed in range(100, 112):
            scene = make_scene(seed)
            twin = jitter(scene, seed + 1000, shift=1, noise=3.0)
            a = prediction_from_regions(predict(scene.image), scene.gt.shape)
            final, corrected = list(a.names), {}
            for r in _object_regions(a, scene.gt.astype(np.int32), 2):
                corrected[r] = final[r] = f"corrected {words[len(corrected) + 2 * (seed - 100)]}"
            record_correction(services, Image.fromarray(scene.image), f"case-{seed}", a, final)
            b = prediction_from_regions(predict(twin.image), twin.gt.shape)
            for r, name in corrected.items():
                mask = a.region_map == r
                ious = [(mask & (b.region_map == j)).sum() / (mask | (b.region_map == j)).sum()
                        for j in range(b.n_regions)]
                j = int(np.argmax(ious))
                leaks += sum(n == name for k, n in enumerate(b.names) if k != j)
                if ious[j] < 0.5:  # the twin's segmentation did not reproduce the region
                    continue
                cases += 1
                hits += b.names[j] == name
            delete_annotation(services.store, f"eval-sim:case-{seed}")
            services.refresh()
    finally:
        services.close()
    print(f"one-correction recall: {hits}/{cases} comparable regions, {leaks} leaks")
    assert cases >= 12, f"only {cases} comparable regions"
    assert hits / cases >= 0.95, f"{hits}/{cases} near-identical regions came back renamed"
    assert leaks <= 2, f"the corrected names leaked onto {leaks} other regions"
    assert len(services.knowledge().exemplars) == 0  # deleting the annotations undid them


def test_a_region_an_annotator_would_fix_sorts_below_one_they_would_keep(eval_settings,
                                                                        eval_services, tmp_path):
    """One score scale: on the synthetic suite, after the simulated annotator corrected some
    scenes, the regions of near-identical scenes that the same annotator would keep score
    higher than those they would fix (ranking AUC), whichever evidence named them."""
    from database_tools.corrections import delete_annotation
    from tag_backend.eval.datasets import read_dataset
    from tag_backend.eval.mapping import DEFAULT_STRICT_THRESHOLD, NameMapper
    from tag_backend.eval.scoring import default_protocols
    from tag_backend.eval.simulate import annotator_names
    from tag_backend.services import Services

    root = write_synthetic(tmp_path / "syn", count=1, size=224)
    dataset = read_dataset("synthetic", root)
    mapper = NameMapper(eval_services.models.clip.text_encoder(), dataset.classes)
    strict = next(p for p in default_protocols(dataset, DEFAULT_STRICT_THRESHOLD["clip"])
                  if p.name == "strict")
    services = Services(eval_settings, pipeline_overrides={"image_size": 224, "use_crf": False,
                                                           "kmeans_restarts": 1})

    def predict(image):
        return services.predictor.predict([Image.fromarray(image)])[0]
    kept, fixed = [], []
    try:
        for seed in range(200, 206):
            scene = make_scene(seed)
            twin = jitter(scene, seed + 1000, shift=1, noise=3.0)
            gt = scene.gt.astype(np.int32)
            a = prediction_from_regions(predict(scene.image), gt.shape)
            final, _, _ = annotator_names(a, gt, dataset, mapper, strict)
            record_correction(services, Image.fromarray(scene.image), f"rank-{seed}", a, final)
            b = prediction_from_regions(predict(twin.image), gt.shape)
            after, _, _ = annotator_names(b, twin.gt.astype(np.int32), dataset, mapper, strict)
            for name, wanted, score in zip(b.names, after, b.scores):
                (kept if name == wanted else fixed).append(score)
            delete_annotation(services.store, f"eval-sim:rank-{seed}")
            services.refresh()
    finally:
        services.close()
    assert kept and fixed, (kept, fixed)
    pairs = [(k > f) + 0.5 * (k == f) for k in kept for f in fixed]
    auc = sum(pairs) / len(pairs)
    print(f"score AUC kept vs fixed: {auc:.3f} ({len(kept)} kept, {len(fixed)} fixed)")
    assert all(0.0 <= s <= 1.0 for s in kept + fixed)  # probabilities
    assert auc >= 0.9, f"kept {sorted(kept)} fixed {sorted(fixed)}"
