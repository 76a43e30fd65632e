"""Interactive predictions: a smart-tool prompt from Label Studio -> the named region it selects.

Label Studio sends ``/predict`` with ``params.context.result`` when an annotator uses a smart tool
(``smart="true"`` on KeyPointLabels / RectangleLabels / BrushLabels, with "Interactive
preannotations" on in the model connection; docs/interactive.md). The regions in it:

* ``keypointlabels``: ``value.x`` / ``value.y`` in percent of the image, ``is_positive`` (a
  negative click is Alt+click in Label Studio);
* ``rectanglelabels``: ``value.x, y, width, height`` in percent, ``rotation`` in degrees about the
  top-left corner (the rotated box's bounding box is used);
* ``brushlabels``: a brush stroke as Label Studio RLE.

The reply holds exactly one item for the task (Label Studio merges ``results[0]`` into the
annotation): the selected region(s) as brush masks, each with its open-vocabulary name and
score, labelled with the smart tool's label when the BrushLabels has it.

Selection (tag_backend.stages.prompted) works on the image's TAG segments, computed once and
kept (:class:`SegmentCache`, bounded in bytes) so that later clicks on the same image skip the
engine entirely; the backbone features come from the predictor's feature cache (shared with
the prediction path). With ``TAG_REFINE=sam2`` the prompt goes to SAM 2 instead, with the SAM
image embeddings kept the same way.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from .. import metrics
from ..feature_cache import FeatureCache
from ..pipeline import region_origin
from ..stages.prompted import FeatureSplitter, Prompts, sam_prompt, select_segments
from ..stages.sam_refine import interior_points
from ..types import SegmentLabel
from .errors import BackendRequestError
from .layout import ResultLayout
from .serializer import empty_item

logger = logging.getLogger(__name__)

PROMPT_TYPES = ("keypointlabels", "rectanglelabels", "brushlabels")


class InteractiveRequestError(BackendRequestError):
    """An interactive context Label Studio could not have meant (HTTP 400 with the reason)."""


@dataclass
class ParsedContext:
    """The prompts of one interactive call and the smart tool's label (if any)."""

    prompts: Prompts
    label: str | None


def _number(value: Mapping[str, Any], key: str, where: str) -> float:
    raw = value.get(key)
    try:
        number = float(raw)
    except (TypeError, ValueError):
        raise InteractiveRequestError(f"{where}: value.{key} must be a number, got {raw!r}") from None
    if not math.isfinite(number):
        raise InteractiveRequestError(f"{where}: value.{key} must be finite, got {raw!r}")
    return number


def _rectangle(value: Mapping[str, Any], size: tuple[int, int], where: str
               ) -> tuple[float, float, float, float]:
    H, W = size
    x, y = _number(value, "x", where) * W / 100, _number(value, "y", where) * H / 100
    w, h = _number(value, "width", where) * W / 100, _number(value, "height", where) * H / 100
    if w <= 0 or h <= 0:
        raise InteractiveRequestError(f"{where}: rectangle width and height must be positive")
    angle = math.radians(float(value.get("rotation") or 0.0))
    cos, sin = math.cos(angle), math.sin(angle)
    corners = [(x + dx * cos - dy * sin, y + dx * sin + dy * cos) for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    x0, x1 = max(0.0, min(xs)), min(float(W), max(xs))
    y0, y1 = max(0.0, min(ys)), min(float(H), max(ys))
    if x1 <= x0 or y1 <= y0:
        raise InteractiveRequestError(f"{where}: the rectangle lies outside the image")
    return x0, y0, x1, y1


def _stroke(value: Mapping[str, Any], item: Mapping[str, Any], size: tuple[int, int], where: str) -> np.ndarray:
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        raise InteractiveRequestError(f"{where}: a brush stroke needs value.format 'rle' and value.rle")
    H, W = size
    h = int(item.get("original_height") or H)
    w = int(item.get("original_width") or W)
    # Imported here: label_studio_sdk.converter pulls in nltk (seconds of start-up, tag_backend.ls.rle).
    from label_studio_sdk.converter.brush import decode_rle

    try:
        flat = decode_rle(rle)
        stroke = flat.reshape(h, w, 4)[:, :, 3] > 0
    except Exception as exc:  # noqa: BLE001 - the SDK decoder raises several types on bad input
        raise InteractiveRequestError(f"{where}: the brush RLE does not decode to a {w}x{h} mask: {exc}") from None
    if (h, w) != (H, W):
        stroke = cv2.resize(stroke.view(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
    return stroke


def parse_context(context: Mapping[str, Any], image_name: str, size: tuple[int, int]) -> ParsedContext:
    """The prompts of ``params.context`` for the image ``image_name`` of (H, W) ``size``.

    Regions of other objects and other types (e.g. a TextArea) are ignored; a malformed prompt
    region raises :class:`InteractiveRequestError`.
    """
    result = context.get("result")
    if result is None:
        result = []
    if not isinstance(result, list):
        raise InteractiveRequestError("params.context.result must be a list of regions")
    H, W = size
    prompts = Prompts()
    label = None
    for n, item in enumerate(result):
        where = f"params.context.result[{n}]"
        if not isinstance(item, Mapping) or item.get("type") not in PROMPT_TYPES:
            continue
        if item.get("to_name") not in (None, image_name):
            continue
        value = item.get("value")
        if not isinstance(value, Mapping):
            raise InteractiveRequestError(f"{where}: value must be an object")
        kind = item["type"]
        labels = value.get(kind)
        if label is None and isinstance(labels, list) and labels and isinstance(labels[0], str):
            label = labels[0]
        positive = item.get("is_positive", True) not in (False, 0, "false", "False")
        if kind == "keypointlabels":
            x = _number(value, "x", where) * W / 100
            y = _number(value, "y", where) * H / 100
            if not (0 <= x <= W and 0 <= y <= H):
                raise InteractiveRequestError(f"{where}: the point lies outside the image")
            (prompts.positives if positive else prompts.negatives).append((min(x, W - 1e-3), min(y, H - 1e-3)))
        elif kind == "rectanglelabels":
            prompts.boxes.append(_rectangle(value, size, where))
        else:
            stroke = _stroke(value, item, size, where)
            if positive:
                prompts.strokes = stroke if prompts.strokes is None else prompts.strokes | stroke
            else:
                prompts.negatives.extend((x + 0.5, y + 0.5) for x, y in interior_points(stroke, 3))
    return ParsedContext(prompts, label)


@dataclass
class ImageSegments:
    """TAG's segments of one image, kept between clicks.

    labels: (H, W) int16 segment id of every pixel (index into ``regions``).
    regions: the engine's regions without their masks (names, scores, embeddings).
    """

    labels: np.ndarray
    regions: list[SegmentLabel]

    @property
    def nbytes(self) -> int:
        emb = sum(int(r.embedding.nbytes) for r in self.regions if r.embedding is not None)
        return int(self.labels.nbytes) + emb

    @classmethod
    def from_regions(cls, regions: Sequence[SegmentLabel], size: tuple[int, int]) -> "ImageSegments":
        labels = np.full(size, -1, np.int16)  # at most a few dozen regions per image
        kept = []
        for region in regions:
            labels[region.mask & (labels < 0)] = len(kept)
            kept.append(replace(region, mask=np.zeros((0, 0), bool)))
        if (labels < 0).any():  # regions always partition the image; guard anyway
            labels[labels < 0] = int(np.bincount(labels[labels >= 0]).argmax()) if kept else 0
        return cls(labels=labels, regions=kept)


#: The interactive segment cache gets this share of TAG_FEATURE_CACHE_MB (at least 64 MiB): a
#: segment map is 2 bytes per pixel, the features it comes from are kept by the predictor.
SEGMENT_CACHE_SHARE = 0.25
MIN_SEGMENT_CACHE_BYTES = 64 * 2**20


class InteractivePredictor:
    """Answers interactive ``/predict`` calls (see the module docstring).

    services: the process's :class:`tag_backend.services.Services` (predictor with its feature
    cache and engine lock, pipeline, serializer, fetcher; SAM when ``TAG_REFINE=sam2``).
    """

    def __init__(self, services) -> None:
        self.services = services
        budget = max(MIN_SEGMENT_CACHE_BYTES,
                     int(services.settings.feature_cache_mb * 2**20 * SEGMENT_CACHE_SHARE))
        self.segments = FeatureCache(budget)

    def predict(self, task: Any, layout: ResultLayout, context: Mapping[str, Any],
                model_version: str, knowledge=None) -> dict:
        """The one result item for an interactive call on ``task``.

        Raises :class:`InteractiveRequestError` (HTTP 400) for a malformed prompt; an image that
        cannot be fetched gives an empty item (logged), as in pre-labelling.
        """
        started = time.perf_counter()
        services = self.services
        fetched = services.tasks.fetch(task, layout)
        if fetched.image is None:
            logger.warning("interactive task %s: image unusable: %s",
                           task.get("id", "?") if isinstance(task, Mapping) else "?", fetched.error)
            return empty_item(model_version)
        image = fetched.image
        width, height = image.size
        parsed = parse_context(context, layout.image_name, (height, width))
        groups = parsed.prompts.groups()
        if not groups:
            return empty_item(model_version)
        knowledge = knowledge or services.knowledge()
        regions = self.regions(image, groups, knowledge)
        label = parsed.label if parsed.label in (layout.guided_labels or (layout.label,)) else None
        item = services.serializer.item(regions, width, height, layout, model_version, label=label)
        metrics.STAGE_SECONDS.labels(stage="interactive").observe(time.perf_counter() - started)
        return item

    def regions(self, image, groups: Sequence[Prompts], knowledge) -> list[SegmentLabel]:
        """One named region per prompt group (empty selections are left out)."""
        predictor = self.services.predictor
        pipeline = self.services.pipeline()
        refiner = pipeline.refiner
        key = predictor.feature_key(image)
        segments = None
        if refiner is None:  # SAM answers prompts itself: no need for TAG's segments then
            segments = self.segments.get(f"{key}:{knowledge.db_version}")
            if segments is None:
                found = predictor.predict([image], knowledge=knowledge)[0]
                segments = ImageSegments.from_regions(found, (image.height, image.width))
                self.segments.put(f"{key}:{knowledge.db_version}", segments)
        features = predictor.cache.get(key)
        if features is None:  # evicted, or the feature cache is off (TAG_FEATURE_CACHE_MB=0)
            features = predictor.features(image)
        masks = []
        with predictor.lock:
            for group in groups:
                if segments is None:
                    prompt, multimask = sam_prompt(group)
                    low, iou = refiner.decode(features.sam, [prompt], multimask=multimask)
                    best = int(iou[0].argmax())
                    mask = (refiner.upsample(low[0, best], features.sam.original_size)
                            > refiner.mask_threshold).numpy()
                else:
                    splitter = FeatureSplitter(features.patches.tokens, features.patches.grid)
                    mask = select_segments(segments.labels, group, splitter)
                if mask.any():
                    masks.append(mask)
            if not masks:
                return []
            embeddings = pipeline.embed_regions(image, masks, features=features)
            names = pipeline.name_regions(embeddings, knowledge)
        out = []
        for mask, embedding, named in zip(masks, embeddings, names):
            best = named.candidates[0]
            out.append(SegmentLabel(mask=mask, name=best.name, score=best.score,
                                    alternatives=named.candidates[1:], area=int(mask.sum()),
                                    sources=named.sources, embedding=embedding,
                                    origin=region_origin(named.sources)))
        return out
