"""Named presets: backbones, input size and every segmentation and naming knob of the engine.

* ``paper``: TAG (Kawano & Aoki 2024) as published and as its reference code runs, deviating
  only where that code is broken (input normalisation, GEM's batch-first bug, empty clusters,
  the CRF's colour input); docs/presets.md lists each deviation and each knob.
* ``quality``: the paper's backbones (DINOv2-B/14, OpenAI CLIP ViT-L/14) with the product's
  segmentation improvements, for GPU-class hardware.
* ``fast``: the improvements on small backbones (DINOv2-S/14, CLIP ViT-B/16), fewer k-means
  restarts and a cheaper CRF, bf16 where supported: the CPU default.

:meth:`Preset.pipeline_kwargs` turns a preset into :class:`~tag_backend.pipeline.TagPipeline`
keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """Models and knobs of one preset. Field defaults are the paper's values; docs/presets.md
    says why each other preset differs."""

    name: str
    description: str
    dino_model: str
    clip_model: str
    clip_pretrained: str
    prefer_bf16: bool = False
    # Input
    image_size: int = 448
    resize_mode: str = "squash"
    # Segment candidates: k-means on DINOv2 patch tokens
    n_segments: int = 15
    kmeans_init: str = "random"
    kmeans_restarts: int = 8
    kmeans_max_iter: int = 100
    kmeans_tol: float = 1e-4
    kmeans_convergence: str = "mean_shift"
    seed: int = 123
    assignment: str = "dot"
    # Dense CRF (STEGO's pairwise parameters are CrfParams' defaults in every preset)
    use_crf: bool = True
    crf_iterations: int = 10
    crf_scale: float = 1.0
    crf_unary_gain: float | None = None  # None: softmax of the raw scores (TAG)
    min_segment_area: float = 0.0
    # Dense CLIP features
    dense_method: str = "gem"
    gem_depth: int = 7
    # Retrieval and naming
    top_k_captions: int = 10
    dedup_threshold: float = 0.94
    min_word_count: int = 2
    pos_filter: bool = True
    max_alternatives: int = 5
    merge_same_name: bool = False

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Every :class:`~tag_backend.pipeline.TagPipeline` knob this preset sets."""
        from .stages.crf import CrfParams  # imports torch: not needed to list presets

        return dict(
            image_size=self.image_size, resize_mode=self.resize_mode, n_segments=self.n_segments,
            kmeans_init=self.kmeans_init, kmeans_restarts=self.kmeans_restarts,
            kmeans_max_iter=self.kmeans_max_iter, kmeans_tol=self.kmeans_tol,
            kmeans_convergence=self.kmeans_convergence, seed=self.seed,
            assignment=self.assignment, use_crf=self.use_crf,
            crf_params=CrfParams(iterations=self.crf_iterations, scale=self.crf_scale,
                                 unary_gain=self.crf_unary_gain),
            min_segment_area=self.min_segment_area, dense_method=self.dense_method,
            gem_depth=self.gem_depth, top_k_captions=self.top_k_captions,
            dedup_threshold=self.dedup_threshold, min_word_count=self.min_word_count,
            pos_filter=self.pos_filter, max_alternatives=self.max_alternatives,
            merge_same_name=self.merge_same_name,
        )


PAPER = Preset(
    name="paper",
    description="TAG as published: DINOv2-B/14 + CLIP ViT-L/14 (OpenAI) at 448 px, k=15 "
                "(random init, 8 restarts), dot-product assignment, CRF with raw unaries, GEM",
    dino_model="facebook/dinov2-base",
    clip_model="ViT-L-14-quickgelu",
    clip_pretrained="openai",
)

#: The product's improvements over the paper (docs/presets.md: why each one).
_IMPROVED = dict(kmeans_init="k-means++", kmeans_convergence="relative", assignment="nearest",
                 crf_unary_gain=1.0, min_segment_area=0.002, merge_same_name=True)

PRESETS: dict[str, Preset] = {
    "paper": PAPER,
    "quality": replace(
        PAPER, name="quality", **_IMPROVED,
        description="The paper's backbones (DINOv2-B/14 + CLIP ViT-L/14) at 448 px with the "
                    "improvements (k-means++, nearest-centre assignment, calibrated CRF unary, "
                    "small segments absorbed, same-name merge); for GPUs"),
    "fast": replace(
        PAPER, name="fast", **_IMPROVED,
        description="DINOv2-S/14 + CLIP ViT-B/16 (OpenAI) at 448 px with the improvements, "
                    "3 k-means restarts, CRF at 35% resolution (3 iterations), bf16 when "
                    "supported; for CPUs",
        dino_model="facebook/dinov2-small", clip_model="ViT-B-16-quickgelu", prefer_bf16=True,
        kmeans_restarts=3, crf_scale=0.35, crf_iterations=3),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`ConfigError` naming the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: "
                          f"{', '.join(sorted(PRESETS))} (TAG_PRESET / --preset)") from None
