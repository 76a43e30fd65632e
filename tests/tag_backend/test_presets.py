"""Presets: ``paper`` is TAG's every setting, the others differ only where docs/presets.md says."""
from __future__ import annotations

import inspect
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from scenes import flat_shapes
from tag_backend.errors import ConfigError
from tag_backend.pipeline import TagPipeline
from tag_backend.presets import PRESETS, get_preset
from tag_backend.stages.crf import CrfParams

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "presets.md").read_text()

#: TAG's settings, from its reference code (Valkyrja3607/TAG): scripts/load_dataset.py (448 px
#: squash), scripts/dino_kmeans.py (torch-kmeans 0.2.0 defaults: "rnd" init, 8 restarts, 100
#: iterations, tol 1e-4 on the mean centre shift, seed 123; pixel score = dot product with the centres; no area filter),
#: scripts/crf.py (always on, STEGO parameters, softmax of the raw scores), GEM with gem_depth 7,
#: CaSED retrieval (10 captions, dedup > 0.94, words seen twice, POS filter), one name per segment
#: (no merge).
TAG_KNOBS = dict(
    image_size=448, resize_mode="squash", n_segments=15, kmeans_init="random",
    kmeans_restarts=8, kmeans_max_iter=100, kmeans_tol=1e-4, kmeans_convergence="mean_shift",
    seed=123, assignment="dot",
    use_crf=True, crf_params=CrfParams(iterations=10, gaussian_sxy=1.0, gaussian_compat=3.0,
                                       bilateral_sxy=67.0, bilateral_srgb=3.0,
                                       bilateral_compat=4.0, unary_gain=None, scale=1.0),
    min_segment_area=0.0, dense_method="gem", gem_depth=7, top_k_captions=10,
    dedup_threshold=0.94, min_word_count=2, pos_filter=True, merge_same_name=False,
)
#: Not method settings: how many runner-up names a region carries to Label Studio.
OUTPUT_ONLY = {"max_alternatives"}
#: TagPipeline arguments that are not preset knobs (models, data, learning, input guard).
# Loaded objects and service settings, not method knobs: the backbones' inference backend
# (``forwards``) and the optional SAM refiner are chosen by settings, not by the preset.
NOT_PRESET = {"self", "dino", "clip", "index", "text_encoder", "exemplars", "aliases",
              "exemplar_threshold", "max_image_pixels", "forwards", "refiner"}


def test_paper_preset_pins_every_knob_to_tag():
    paper = get_preset("paper")
    assert (paper.dino_model, paper.clip_model, paper.clip_pretrained, paper.prefer_bf16) == (
        "facebook/dinov2-base", "ViT-L-14-quickgelu", "openai", False)
    knobs = paper.pipeline_kwargs()
    assert {k: v for k, v in knobs.items() if k not in OUTPUT_ONLY} == TAG_KNOBS


def test_pipeline_kwargs_cover_every_pipeline_knob():
    knobs = set(inspect.signature(TagPipeline.__init__).parameters) - NOT_PRESET
    for preset in PRESETS.values():
        assert set(preset.pipeline_kwargs()) == knobs, preset.name


def test_improved_presets_differ_from_paper_only_where_documented():
    paper = asdict(get_preset("paper"))
    improvements = {"kmeans_init": "k-means++", "kmeans_convergence": "relative",
                    "assignment": "nearest", "crf_unary_gain": 1.0, "min_segment_area": 0.002,
                    "merge_same_name": True}
    quality = asdict(get_preset("quality"))
    assert {k for k in paper if paper[k] != quality[k]} == {"name", "description", *improvements}
    assert all(quality[k] == v for k, v in improvements.items())
    fast = asdict(get_preset("fast"))
    cheaper = {"dino_model", "clip_model", "prefer_bf16", "kmeans_restarts", "crf_scale",
               "crf_iterations"}
    assert {k for k in paper if paper[k] != fast[k]} == {"name", "description", *improvements,
                                                         *cheaper}


def test_docs_table_has_every_knob_and_preset():
    fields = set(asdict(get_preset("paper"))) - {"name", "description"}
    missing = [f for f in fields if f"| `{f}` |" not in DOCS]
    assert not missing, f"docs/presets.md lacks rows for {missing}"
    header = next(line for line in DOCS.splitlines() if line.startswith("| knob |"))
    assert all(f"`{name}`" in header for name in PRESETS)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="choose one of: fast, paper, quality"):
        get_preset("best")


def test_paper_preset_runs_and_partitions_the_image(tiny_services_session):
    """TAG's choices on the tiny models: no merge, no area threshold, but no empty segment."""
    services = tiny_services_session
    pipeline = TagPipeline(services.models.dino, services.models.clip, services.knowledge().index,
                           text_encoder=services.text_encoder,
                           **get_preset("paper").pipeline_kwargs())
    image, _ = flat_shapes(seed=3)
    regions = pipeline.generate(image)
    cover = np.sum([r.mask.astype(np.int32) for r in regions], axis=0)
    assert (cover == 1).all() and all(r.area > 0 for r in regions)
    assert 1 <= len(regions) <= 15
    assert all(np.isfinite(r.score) and np.isfinite(r.embedding).all() for r in regions)
