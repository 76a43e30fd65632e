"""The TAG pipeline: image -> named segments, with no class list from the user."""
from __future__ import annotations

import functools
import logging
import time
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from PIL import Image

from .exemplars import AliasMap, ExemplarIndex, empty_exemplars
from .image_io import DEFAULT_MAX_PIXELS, open_image
from .inference.forwards import BackboneForwards, TorchForwards
from .knowledge import Knowledge
from .models import LoadedClip, LoadedDino
from .stages import crf as crf_stage
from .stages.kmeans import kmeans
from .stages.confidence import combine, exemplar_probability, retrieval_probability
from .stages.naming import FALLBACK_NAME, SegmentNames, display_name, name_segments
from .stages.pooling import mask_weights, pool_segments
from .stages.preprocess import prepare_image
from .stages.segments import (
    drop_small_segments,
    grid_scores,
    label_map,
    patch_weights,
    upsample_labels,
    upsample_scores,
)
from .types import ImageFeatures, NameCandidate, PreparedImage, SegmentLabel

logger = logging.getLogger(__name__)


class TagPipeline:
    """Guidance-free open-vocabulary segmentation (TAG, Kawano & Aoki 2024) with fixes.

    The defaults below are the ``quality`` / ``fast`` presets' segmentation choices; the
    ``paper`` preset's values are given in parentheses where they differ, and
    :meth:`tag_backend.presets.Preset.pipeline_kwargs` gives every knob of a preset
    (docs/presets.md: knob -> paper value -> preset values -> why).

    Arguments:
      dino, clip: loaded backbones (:mod:`tag_backend.models`).
      forwards: the engine of the backbone forwards (:mod:`tag_backend.inference`); default
        torch on the models' device.
      index: the concept index (``database_tools.index.ConceptIndex``): ``search(q, k, return_vectors)``.
      text_encoder: ``TextEncoder`` for words extracted from captions; defaults to the CLIP text
        tower. Concept entries are scored with the vectors the index returns for them.
      exemplars: corrected-region memory (an ``ExemplarIndex``); a segment within
        ``exemplar_threshold`` cosine of an exemplar takes its concept.
      aliases: names annotators repeatedly corrected (predicted -> wanted); applied to the best
        retrieved name when no exemplar matched.
      image_size (448): model input side in pixels; cost grows with its square.
      resize_mode ("squash"): paper squashes to a square; "keep_aspect" keeps the aspect ratio.
      n_segments (15): k of the per-image k-means (upper bound on segments before merging).
      kmeans_init ("k-means++"; paper "random"), kmeans_restarts (8), kmeans_max_iter (100),
        kmeans_tol (1e-4), kmeans_convergence ("relative": scikit-learn's test; paper
        "mean_shift": torch-kmeans'), seed (123): k-means settings (:func:`.stages.kmeans.kmeans`).
      assignment ("nearest"; paper "dot"): pixel -> segment by nearest centre, or by the
        largest dot product with the centres as TAG does.
      use_crf (True): dense-CRF refinement (STEGO parameters), skipped with a single log line
        when pydensecrf2 is not installed. ``crf_params`` (:class:`~.stages.crf.CrfParams`):
        iterations (10), resolution ``scale`` (1.0) and the unary: ``unary_gain=None`` is TAG's
        softmax of the raw scores, a number calibrates the scores first (default 1.0).
      min_segment_area (0.002; paper 0): segments below this share of the image are absorbed
        by their next-best neighbour. Empty segments are always dropped (TAG pooled them into
        NaN embeddings).
      dense_method ("gem"): dense CLIP features, "gem" (paper), "naclip" or "plain"; gem_depth (7).
      top_k_captions (10), dedup_threshold (0.94), min_word_count (2), pos_filter (True):
        retrieval and TAG's word extraction.
      max_alternatives (5): alternative names kept per region.
      merge_same_name (True; paper False): segments with the same concept (id, or text for
        caption words) become one region; homonyms shown with the same name stay apart.
      exemplar_threshold (0.90): cosine needed to take a corrected exemplar's name.
      max_image_pixels: decompression-bomb guard for decoded images.
      refiner: optional SAM 2 boundary refinement (:class:`~.stages.sam_refine.SamRefiner`);
        names are then pooled inside the refined masks.
    """

    def __init__(self, dino: LoadedDino, clip: LoadedClip, index, *,
                 forwards: BackboneForwards | None = None, text_encoder=None,
                 exemplars: ExemplarIndex | None = None, aliases: AliasMap | None = None,
                 image_size: int = 448,
                 resize_mode: str = "squash", n_segments: int = 15, kmeans_init: str = "k-means++",
                 kmeans_restarts: int = 8, kmeans_max_iter: int = 100, kmeans_tol: float = 1e-4,
                 kmeans_convergence: str = "relative", seed: int = 123,
                 assignment: str = "nearest", use_crf: bool = True,
                 crf_params: crf_stage.CrfParams = crf_stage.CrfParams(),
                 min_segment_area: float = 0.002, dense_method: str = "gem", gem_depth: int = 7,
                 top_k_captions: int = 10, dedup_threshold: float = 0.94, min_word_count: int = 2,
                 pos_filter: bool = True, max_alternatives: int = 5, merge_same_name: bool = True,
                 exemplar_threshold: float = 0.90, max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 refiner=None) -> None:
        if n_segments < 1:
            raise ValueError(f"n_segments must be >= 1, got {n_segments}")
        if image_size < max(dino.patch_size, clip.patch_size):
            raise ValueError(f"image_size {image_size} is smaller than one patch")
        if not 0 <= min_segment_area < 1:
            raise ValueError(f"min_segment_area must be in [0, 1), got {min_segment_area}")
        self.dino, self.clip = dino, clip
        self.forwards = forwards or TorchForwards(dino, clip)
        self.text_encoder = text_encoder or clip.text_encoder()
        # CLIP's learned softmax temperature: turns name cosines into zero-shot probabilities
        scale = clip.logit_scale
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 100.0
        # The default snapshot; callers that refresh knowledge pass theirs to each call instead
        # of changing this one under threads that may be using it.
        self.knowledge = Knowledge(index, exemplars if exemplars is not None else empty_exemplars(),
                                   aliases or AliasMap())
        self.image_size, self.resize_mode, self.n_segments = image_size, resize_mode, n_segments
        self.kmeans_kwargs = dict(n_init=kmeans_restarts, max_iter=kmeans_max_iter, tol=kmeans_tol,
                                  init=kmeans_init, seed=seed, convergence=kmeans_convergence)
        self.assignment, self.use_crf, self.crf_params = assignment, use_crf, crf_params
        self.min_segment_area, self.dense_method, self.gem_depth = min_segment_area, dense_method, gem_depth
        self.naming_kwargs = dict(top_k=top_k_captions, dedup_threshold=dedup_threshold,
                                  min_word_count=min_word_count, pos_filter=pos_filter,
                                  max_alternatives=max_alternatives)
        self.merge_same_name, self.exemplar_threshold = merge_same_name, exemplar_threshold
        self.max_image_pixels = max_image_pixels
        self.refiner = refiner
        if use_crf:
            crf_stage.start_helper()

    # ------------------------------------------------------------------ public API
    def generate(self, image, timings: dict[str, float] | None = None, *,
                 knowledge: Knowledge | None = None) -> list[SegmentLabel]:
        """Named regions of one image (path, bytes or PIL image); raises ImageError if unusable."""
        return self.generate_batch([open_image(image, self.max_image_pixels)], timings,
                                   knowledge=knowledge)[0]

    def generate_batch(self, images: list[Image.Image], timings: dict[str, float] | None = None,
                       *, knowledge: Knowledge | None = None) -> list[list[SegmentLabel]]:
        """Named regions for decoded RGB images; backbones run batched when input sizes agree.

        ``knowledge``: the concept-database snapshot to name with (default: the one given to
        the constructor); a caller that refreshes knowledge hands each call its snapshot.
        """
        return [regions for _, regions in
                self.generate_with_features(images, timings, knowledge=knowledge)]

    @torch.inference_mode()
    def generate_with_features(self, images: list[Image.Image],
                               timings: dict[str, float] | None = None, *,
                               knowledge: Knowledge | None = None
                               ) -> list[tuple[ImageFeatures, list[SegmentLabel]]]:
        """:meth:`generate_batch` that also returns each image's backbone features, so a
        caller can keep them and later rerun only the stages after the forwards."""
        t = timings if timings is not None else {}
        prepared, patches = self._dino_forward(images, t)
        # Segment candidates: k-means on DINOv2 tokens and pixel scores; the CRF starts in its
        # helper process and runs while the dense-CLIP forward below uses this process.
        with _timed(t, "kmeans"):
            pending = [self._start_segment(prep.model_rgb, patch)
                       for prep, patch in zip(prepared, patches)]
        with _timed(t, "dense_clip"), self._lend_core_to_crf(pending) as rebalance:
            dense = self._batched(functools.partial(self._dense, between_blocks=rebalance),
                                  [p.clip_pixels for p in prepared])
        with self._timed_sam(t):
            features = [ImageFeatures(prep.model_rgb, prep.original_size, patch, feats,
                                      self._sam_image(prep))
                        for prep, patch, feats in zip(prepared, patches, dense)]
        return list(zip(features, self._finish(features, pending, t, knowledge)))

    @torch.inference_mode()
    def features(self, images: list[Image.Image], timings: dict[str, float] | None = None
                 ) -> list[ImageFeatures]:
        """The backbone forwards alone (preprocessing, DINOv2, dense CLIP) of decoded images."""
        t = timings if timings is not None else {}
        prepared, patches = self._dino_forward(images, t)
        with _timed(t, "dense_clip"):
            dense = self._batched(self._dense, [p.clip_pixels for p in prepared])
        with self._timed_sam(t):
            return [ImageFeatures(prep.model_rgb, prep.original_size, patch, feats,
                                  self._sam_image(prep))
                    for prep, patch, feats in zip(prepared, patches, dense)]

    @torch.inference_mode()
    def regions_from_features(self, features: list[ImageFeatures],
                              timings: dict[str, float] | None = None, *,
                              knowledge: Knowledge | None = None) -> list[list[SegmentLabel]]:
        """Named regions from kept backbone features: every stage after the forwards, the same
        maths as :meth:`generate_batch` (k-means is seeded, so the regions are the same)."""
        t = timings if timings is not None else {}
        with _timed(t, "kmeans"):
            pending = [self._start_segment(f.model_rgb, f.patches) for f in features]
        return self._finish(features, pending, t, knowledge)

    def feature_signature(self) -> str:
        """What, besides the image, decides the backbone features (a feature-cache key part)."""
        return repr((self.dino.model_id, str(self.dino.dtype), self.clip.encoder_id,
                     str(self.clip.dtype), str(self.clip.device), self.forwards.signature, self.image_size,
                     self.resize_mode, self.dense_method, self.gem_depth,
                     self.refiner.model_id if self.refiner is not None else None))

    @torch.inference_mode()
    def embed_regions(self, image, masks: list[np.ndarray],
                      features: ImageFeatures | None = None) -> np.ndarray:
        """(n, D) L2-normalised CLIP embeddings of arbitrary boolean masks of ``image``
        (``features``: its kept backbone features, which spare the CLIP forward)."""
        if features is None:
            prep = self._prepare(open_image(image, self.max_image_pixels))
            dense = self._dense(prep.clip_pixels)[0]
        else:
            dense = features.dense
        weights = mask_weights(masks, dense.grid)
        empty = weights.sum(1) <= 0
        if bool(empty.any()):
            raise ValueError(f"{int(empty.sum())} mask(s) are empty")
        return pool_segments(weights, dense.features)

    def name_regions(self, embeddings: np.ndarray, knowledge: Knowledge | None = None
                     ) -> list[SegmentNames]:
        """Names of regions from their CLIP embeddings (exemplars, aliases, retrieval)."""
        return self._name(embeddings, knowledge or self.knowledge)

    def _dino_forward(self, images: list[Image.Image], t: dict[str, float]
                      ) -> tuple[list[PreparedImage], list]:
        with _timed(t, "preprocess"):
            prepared = [self._prepare(img) for img in images]
        with _timed(t, "dino"):
            patches = self._batched(self.forwards.dino, [p.dino_pixels for p in prepared])
        return prepared, patches

    def _finish(self, features: list[ImageFeatures], pending: list, t: dict[str, float],
                knowledge: Knowledge | None) -> list[list[SegmentLabel]]:
        knowledge = knowledge or self.knowledge
        results = []
        for feats, segmenting in zip(features, pending):
            # CRF result (or the raw scores), then segments below min_segment_area absorbed.
            with _timed(t, "crf"):
                labels = self._finish_segment(segmenting)
            with _timed(t, "sam_refine" if self.refiner is not None else "pool"):
                labels, weights = self._refine(feats, labels)
            # One embedding per segment: dense CLIP features mean-pooled over the segment.
            with _timed(t, "pool"):
                embeddings = pool_segments(weights, feats.dense.features)
            # Names: corrected exemplars first, then retrieval + CLIP image-text scoring.
            with _timed(t, "name"):
                names = self._name(embeddings, knowledge)
            with _timed(t, "masks"):
                results.append(self._regions(feats.original_size, labels, embeddings, names))
        return results

    # ------------------------------------------------------------------ stages
    def _prepare(self, image: Image.Image) -> PreparedImage:
        return prepare_image(
            image, image_size=self.image_size, resize_mode=self.resize_mode,
            dino_patch=self.dino.patch_size, dino_mean=self.dino.mean, dino_std=self.dino.std,
            dino_dtype=self.dino.dtype, clip_patch=self.clip.patch_size, clip_mean=self.clip.mean,
            clip_std=self.clip.std, clip_dtype=self.clip.dtype, device=self.clip.device)

    @staticmethod
    def _batched(fn, tensors: list[torch.Tensor]) -> list:
        """Run ``fn`` on stacked tensors of equal shape, one call per distinct shape (the whole
        batch goes through a backbone at once; per-image stages stay per image)."""
        out: list = [None] * len(tensors)
        by_shape: dict[tuple, list[int]] = {}
        for i, x in enumerate(tensors):
            by_shape.setdefault(tuple(x.shape), []).append(i)
        for idx in by_shape.values():
            for i, res in zip(idx, fn(torch.cat([tensors[i] for i in idx]))):
                out[i] = res
        return out

    def _dense(self, pixels: torch.Tensor, between_blocks=None):
        return self.forwards.dense(pixels, self.dense_method, self.gem_depth, between_blocks)

    def _lend_core_to_crf(self, pending):
        """On CPU, the CRF helper gets a core of its own while it runs (see ``lend_core``); a
        compiled forward cannot hand the core back between blocks, so it keeps its threads."""
        if self.clip.device.type != "cpu" or self.forwards.backend != "torch":
            return nullcontext(None)
        return crf_stage.lend_core(refine for _, _, refine in pending)

    def _start_segment(self, model_rgb: np.ndarray, patch):
        result = kmeans(patch.tokens, self.n_segments, **self.kmeans_kwargs)
        scores = grid_scores(patch.tokens, patch.grid, result.centers, self.assignment)
        # The CRF resamples the patch-grid scores straight to its own resolution.
        refine = crf_stage.submit_crf(model_rgb, scores, self.crf_params) if self.use_crf else None
        return (int(model_rgb.shape[0]), int(model_rgb.shape[1])), scores, refine

    def _finish_segment(self, pending) -> np.ndarray:
        size, scores, refine = pending
        refined = refine() if refine is not None else None
        logits = refined if refined is not None else upsample_scores(scores, size)
        labels = label_map(logits)
        return drop_small_segments(labels, logits, int(self.min_segment_area * labels.size))

    def _refine(self, feats: ImageFeatures, labels: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """Segment ids and their patch coverage: SAM 2 boundaries at the original size when a
        refiner is set (tag_backend.stages.sam_refine), else the coarse map unchanged."""
        dense = feats.dense
        if self.refiner is None or feats.sam is None:
            return labels, patch_weights(labels, dense.grid, dense.features.device)
        return self.refiner.refine(feats.sam, labels, dense.grid)

    def _timed_sam(self, t: dict[str, float]):
        return _timed(t, "sam_embed") if self.refiner is not None else nullcontext()

    def _sam_image(self, prep: PreparedImage):
        """SAM 2 image embeddings (kept with the backbone features) when refinement is on."""
        return self.refiner.embed(prep.rgb) if self.refiner is not None else None

    def _name(self, embeddings: np.ndarray, knowledge: Knowledge) -> list[SegmentNames]:
        """Candidates per segment, best first; ``confidence`` holds the calibrated probability
        of the first (see :mod:`tag_backend.stages.confidence`)."""
        names = name_segments(embeddings, knowledge.index, self.text_encoder, **self.naming_kwargs)
        for seg, match in zip(names, knowledge.exemplars.match(embeddings, self.exemplar_threshold)):
            if match is not None:
                shown = display_name(match.name)
                same = [c for c in seg.candidates if c.identity == match.entry_id]
                rest = [c for c in seg.candidates if c.identity != match.entry_id]
                cosine = same[0].score if same else 0.0
                evidence = [exemplar_probability(match.score)]
                if same:
                    evidence.append(self._retrieval_probability(seg, seg.candidates.index(same[0])))
                seg.candidates = [NameCandidate(shown, cosine, match.entry_id, match.name)] + rest
                seg.confidence = combine(*evidence)
                seg.sources = ["exemplar:" + match.name] + seg.sources
                continue
            best = seg.candidates[0]
            seg.confidence = self._retrieval_probability(seg, 0)
            wanted = knowledge.aliases.lookup(best.name)
            if wanted is not None:
                shown = display_name(wanted.text)
                rest = [c for c in seg.candidates if c.name != shown]
                seg.candidates = [NameCandidate(shown, best.score, wanted.entry_id, wanted.text)] + rest
                seg.sources = [f"alias:{best.name}->{wanted.text}"] + seg.sources
        return names

    def _retrieval_probability(self, seg: SegmentNames, chosen: int) -> float:
        """CLIP's probability of candidate ``chosen`` among the segment's candidates."""
        if seg.candidates[chosen].entry_id is None and seg.candidates[chosen].name == FALLBACK_NAME \
                and len(seg.candidates) == 1:
            return 0.0  # retrieval found nothing: the placeholder is no name
        return retrieval_probability([c.score for c in seg.candidates], chosen, self.logit_scale)

    def _regions(self, original_size: tuple[int, int], labels: np.ndarray,
                 embeddings: np.ndarray, names: list[SegmentNames]) -> list[SegmentLabel]:
        full = upsample_labels(labels, original_size)
        areas = np.bincount(full.ravel(), minlength=len(names))
        groups: dict[object, list[int]] = {}
        for seg, info in enumerate(names):
            if areas[seg] == 0:
                continue
            key = info.candidates[0].identity if self.merge_same_name else f"segment {seg}"
            groups.setdefault(key, []).append(seg)
        regions = [self._merge(full, segs, areas, embeddings, names) for segs in groups.values()]
        return sorted(regions, key=lambda r: -r.area)

    def _merge(self, full, segs, areas, embeddings, names) -> SegmentLabel:
        weights = areas[segs].astype(np.float64)
        main = segs[int(np.argmax(weights))]
        emb = (embeddings[segs] * weights[:, None]).sum(0)
        emb = (emb / max(np.linalg.norm(emb), 1e-12)).astype(np.float32)
        best = names[main].candidates[0]
        score = float(sum(names[s].confidence * w for s, w in zip(segs, weights)) / weights.sum())
        cosine = float(sum(names[s].candidates[0].score * w for s, w in zip(segs, weights)) / weights.sum())
        sources = list(dict.fromkeys(src for s in segs for src in names[s].sources))
        return SegmentLabel(
            mask=np.isin(full, segs), name=best.name, score=score,
            alternatives=names[main].candidates[1:], area=int(weights.sum()), sources=sources,
            embedding=emb, origin=region_origin(sources), entry_id=best.entry_id, cosine=cosine,
        )


def region_origin(sources: list[str]) -> str:
    """A region's ``origin`` from its name sources (exemplar, alias or retrieval)."""
    if sources and sources[0].startswith("exemplar:"):
        return "exemplar"
    if sources and sources[0].startswith("alias:"):
        return "alias"
    return "retrieval"


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
