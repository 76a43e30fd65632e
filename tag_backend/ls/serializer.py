"""The one Label Studio serializer: named regions + the project's layout -> result items.

Everything that decides what Label Studio shows happens here, in this order:

1. **mask cleaning and the region cap** (:func:`tag_backend.masks.clean_regions`): speckle, not
   resolution, drives the brush RLE size and the browser's memory, so masks are smoothed, tiny
   islands removed and at most ``max_regions`` of the largest kept;
2. **the label choice**: guided mode (the project's own labels; :data:`GuidedLabeler`, one
   small swappable function), the fixed label of the recommended config (names go into the
   TextArea), or the free-form name itself (a config with no TextArea and no static labels);
3. **the items**: for each shape control of the config, one ``brushlabels`` item per region
   (brush RLE) and/or one ``polygonlabels`` / ``rectanglelabels`` item per connected part of it
   (:mod:`.shape_items`); with a per-region TextArea each shape item is paired with a
   ``textarea`` item with the **same id** carrying the free-form name, so the annotator corrects
   the name by editing the text;
4. **the task score** (what the Data Manager sorts on): area-weighted mean of the regions'
   scores, each the probability that the region's name is right (docs/learning.md).

Nothing else in the project builds Label Studio result JSON.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..masks import MaskCleaning, clean_regions
from ..types import SegmentLabel
from .guided import LabelSnapper, ProjectLabel
from .layout import DEFAULT_LAYOUT, ResultLayout
from .rle import mask_to_rle
from .shape_items import control_label, polygon_values, rectangle_values

logger = logging.getLogger(__name__)

#: Guided mode's label choice: the regions and the layout -> for each region, its label (None:
#: drop the region) and its score in that label (None: keep the region's own score).
GuidedLabeler = Callable[[Sequence[SegmentLabel], ResultLayout], list[tuple[str | None, float | None]]]


def snapping_labeler(snapper: LabelSnapper) -> GuidedLabeler:
    """Guided labels (tag_backend.ls.guided): a name or ``predicted_values`` match first, else
    zero-shot CLIP over the project's labels on the region's image embedding; a zero-shot
    label's probability becomes the region's score."""

    def choose(regions: Sequence[SegmentLabel], layout: ResultLayout
               ) -> list[tuple[str | None, float | None]]:
        labels = layout.project_labels or tuple(ProjectLabel(v) for v in layout.guided_labels)
        snaps = snapper.snap([r.name for r in regions], [r.embedding for r in regions], labels,
                             layout.score_threshold)
        return [(s.label, s.score if s.method == "zero-shot" else None) for s in snaps]

    return choose


def new_region_id() -> str:
    """Short unique region id (Label Studio's own ids are 10 url-safe characters)."""
    return uuid.uuid4().hex[:10]


@dataclass
class PlacedRegion:
    """A region ready for Label Studio: cleaned mask, the brush label and the free-form name.

    ``entry_id`` is the name's concept id and ``region_id`` the Label Studio region id; the
    pair is recorded with the served prediction so corrections resolve to concept ids.
    """

    mask: np.ndarray
    name: str
    label: str
    score: float
    entry_id: int | None = None
    region_id: str = field(default_factory=new_region_id)


def empty_item(model_version: str) -> dict:
    """The item of a task with nothing to show (failure or no region)."""
    return {"result": [], "score": 0.0, "model_version": str(model_version)}


def region_items(region: PlacedRegion, width: int, height: int,
                 layout: ResultLayout = DEFAULT_LAYOUT, region_id: str | None = None,
                 polygon_tolerance: float = 1.5) -> list[dict]:
    """The result items of one placed region: brush, polygon and box items for the shape controls
    the config has, each paired with its name item when the config has a per-region TextArea."""
    if region.mask.shape != (height, width):
        raise ValueError(f"mask shape {region.mask.shape} does not match image {height}x{width}")
    rid = region_id or region.region_id
    common = {
        "to_name": layout.image_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(region.score), 4),
        "readonly": False,
    }
    shapes: list[tuple[str, str, dict]] = []  # (from_name, type, value)
    if layout.brush_name:
        shapes.append((layout.brush_name, "brushlabels",
                       {"format": "rle", "rle": mask_to_rle(region.mask), "brushlabels": [region.label]}))
    if layout.polygon_name:
        label = control_label(region.label, layout.polygon_labels)
        shapes += [(layout.polygon_name, "polygonlabels", v)
                   for v in polygon_values(region.mask, label, polygon_tolerance)]
    if layout.rectangle_name:
        label = control_label(region.label, layout.rectangle_labels)
        shapes += [(layout.rectangle_name, "rectanglelabels", v) for v in rectangle_values(region.mask, label)]
    items = []
    for k, (from_name, kind, value) in enumerate(shapes):
        item_id = rid if k == 0 else f"{rid}-{k}"
        items.append({"id": item_id, **common, "from_name": from_name, "type": kind, "value": value})
        if layout.text_name:
            items.append({"id": item_id, **common, "from_name": layout.text_name, "type": "textarea",
                          "value": {"text": [region.name]}})
    return items


def task_score(regions: Sequence[PlacedRegion]) -> float:
    """Task-level score: area-weighted mean of the regions' name probabilities (the expected
    share of the labelled area named right), 0 if none."""
    if not regions:
        return 0.0
    areas = np.array([max(int(r.mask.sum()), 1) for r in regions], dtype=np.float64)
    scores = np.array([r.score for r in regions], dtype=np.float64)
    return round(float((areas * scores).sum() / areas.sum()), 4)


class Serializer:
    """Named regions -> Label Studio prediction items (see the module docstring).

    max_regions: most regions per image (the largest are kept).
    guided: the label choice of guided mode; required to serialize for a guided layout.
    cleaning: mask-cleaning knobs (:class:`tag_backend.masks.MaskCleaning`).
    polygon_tolerance: ``PolygonLabels`` output, the most an outline strays from the mask (pixels).
    """

    def __init__(self, *, max_regions: int = 30, guided: GuidedLabeler | None = None,
                 cleaning: MaskCleaning = MaskCleaning(), polygon_tolerance: float = 1.5) -> None:
        if max_regions < 0:
            raise ValueError(f"max_regions must be >= 0, got {max_regions}")
        if polygon_tolerance < 0:
            raise ValueError(f"polygon_tolerance must be >= 0 pixels, got {polygon_tolerance}")
        self.max_regions, self.guided, self.cleaning = max_regions, guided, cleaning
        self.polygon_tolerance = polygon_tolerance

    def place(self, regions: Sequence[SegmentLabel], layout: ResultLayout) -> list[PlacedRegion]:
        """Clean masks, cap their number and choose each region's label (steps 1-2)."""
        kept = clean_regions([r.mask for r in regions], self.max_regions, self.cleaning)
        chosen = [regions[i] for i, _ in kept]
        placed = []
        for (_, mask), region, (label, score) in zip(kept, chosen, self._labels(chosen, layout)):
            if label is None:
                logger.debug("guided mode: %r is below the threshold: region dropped", region.name)
                continue
            placed.append(PlacedRegion(mask=mask, name=region.name, label=label,
                                       score=float(region.score if score is None else score),
                                       entry_id=region.entry_id))
        return placed

    def _labels(self, regions: Sequence[SegmentLabel], layout: ResultLayout
                ) -> list[tuple[str | None, float | None]]:
        if layout.guided_labels:
            if self.guided is None:
                raise ValueError("this labeling config lists its own labels (guided mode), "
                                 "but the serializer has no guided label choice")
            return self.guided(regions, layout)
        if layout.text_name:
            return [(layout.label, None)] * len(regions)
        # No TextArea, no static labels: the name is the label.
        return [(r.name, None) for r in regions]

    def item(self, regions: Sequence[SegmentLabel], width: int, height: int,
             layout: ResultLayout, model_version: str, label: str | None = None) -> dict:
        """One ``/predict`` result item / task prediction: ``{"result", "score",
        "model_version"}``. Masks must be (height, width) booleans at the original size.
        ``label``: every region gets this label (the label an annotator chose on a smart tool)."""
        return self.placed_item(regions, width, height, layout, model_version, label)[0]

    def placed_item(self, regions: Sequence[SegmentLabel], width: int, height: int,
                    layout: ResultLayout, model_version: str, label: str | None = None
                    ) -> tuple[dict, list[PlacedRegion]]:
        """:meth:`item` and the placed regions it holds (region ids, concept ids)."""
        placed = self.place(regions, layout)
        if label is not None:
            placed = [PlacedRegion(p.mask, p.name, label, p.score, p.entry_id, p.region_id)
                      for p in placed]
        result: list[dict] = []
        for region in placed:
            result.extend(region_items(region, width, height, layout,
                                       polygon_tolerance=self.polygon_tolerance))
        item = {"result": result, "score": task_score(placed), "model_version": str(model_version)}
        return item, placed

    def task(self, image_ref: str, regions: Sequence[SegmentLabel], width: int, height: int,
             layout: ResultLayout, model_version: str) -> dict:
        """An importable Label Studio task with its prediction (``tag-backend predict``);
        ``image_ref`` is what Label Studio should load (URL, ``/data/local-files/?d=...``)."""
        return {"data": {layout.image_field: image_ref},
                "predictions": [self.item(regions, width, height, layout, model_version)]}
